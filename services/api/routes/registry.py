"""The authority's registries over HTTP (issue 13, R17): the agency of a pooling region (and the regulator for the
national catalog, payment standards, price caps, chronic-disease lists and emergency declarations) registers,
suspends, reinstates and changes every fact a rule or a settlement reads.

``POST /registry/<what>`` sends one registry command (``REGISTRY_SLUGS``): the body is the command's fields; who
changed the fact (``changed_by``) is the key's party, never the body; ``Idempotency-Key`` as everywhere. The gate lets
agencies send every registry command and regulators the catalog ones; the handler refuses (403) an agency changing a
fact of another region. ``GET /registry/<what>/<id>`` reads a fact as the registry holds it now (agencies and the
regulator); ``GET /registry/changes`` lists who changed which fact when (the traceability projection).
"""

# No ``from __future__ import annotations`` here: the route functions are built in a loop and FastAPI reads their
# annotations (the body model of each command) at definition time.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, create_model

from projections.traceability.registry_changes import registry_changes
from services.adapters.api_keys import Party, record_regulator_query
from services.api import models as m
from services.api.deps import IdempotencyKey, Limit, Rt, command_id, current_party
from services.api.routes.common import ERRORS, run
from services.application import commands as c
from services.application.access import Forbidden, PartyKind
from services.application.unit_of_work import NOT_FOUND, UnitOfWork
from services.domain.aggregate import Aggregate
from services.domain.errors import NotFound
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    Pharmacist,
    Pharmacy,
    Physician,
)

router = APIRouter(prefix="/registry", tags=["registry"], responses=ERRORS)

REGISTRY_SLUGS: dict[type[c.RegistryCommand], str] = {
    c.RegisterInstitution: "institutions",
    c.ChangeInstitution: "institution-changes",
    c.SuspendInstitutionAgreement: "institution-suspensions",
    c.ReinstateInstitutionAgreement: "institution-reinstatements",
    c.RegisterPhysician: "physicians",
    c.SuspendPhysician: "physician-suspensions",
    c.ReinstatePhysician: "physician-reinstatements",
    c.ChangePhysicianKey: "physician-keys",
    c.RegisterPharmacist: "pharmacists",
    c.RecordCooperationAgreement: "cooperation-agreements",
    c.EndCooperationAgreement: "cooperation-agreement-ends",
    c.SuspendPharmacist: "pharmacist-suspensions",
    c.ReinstatePharmacist: "pharmacist-reinstatements",
    c.DesignatePharmacy: "pharmacies",
    c.SuspendPharmacyAgreement: "pharmacy-suspensions",
    c.ReinstatePharmacyAgreement: "pharmacy-reinstatements",
    c.ListPharmacyDrugs: "pharmacy-drug-listings",
    c.DelistPharmacyDrugs: "pharmacy-drug-delistings",
    c.SetPharmacyChronicQualification: "pharmacy-chronic-qualifications",
    c.ChangePharmacyPayee: "pharmacy-payees",
    c.RegisterDeliveryEnterprise: "delivery-enterprises",
    c.ChangeDeliveryEnterpriseGsp: "delivery-enterprise-gsp",
    c.SuspendPatientForFraud: "patient-suspensions",
    c.ReinstatePatient: "patient-reinstatements",
    c.RegisterPatientInsurance: "patient-insurance",
    c.ChangePatientInsurance: "patient-insurance-changes",
    c.GrantChronicEntitlement: "chronic-entitlements",
    c.RevokeChronicEntitlement: "chronic-entitlement-revocations",
    c.RecordOffSiteFiling: "off-site-filings",
    c.EndOffSiteFiling: "off-site-filing-ends",
    c.DeclareEmergency: "emergencies",
    c.EndEmergency: "emergency-ends",
    c.ListDrug: "drugs",
    c.ChangeDrugListing: "drug-changes",
    c.SetPaymentStandard: "payment-standards",
    c.SetPriceCap: "price-caps",
    c.AddChronicDisease: "chronic-diseases",
    c.RemoveChronicDisease: "chronic-disease-removals",
}
"""The path of each registry command (the CLI's ``rxtrail registry <what>`` uses the same words)."""
SLUG_COMMANDS: dict[str, type[c.RegistryCommand]] = {slug: cls for cls, slug in REGISTRY_SLUGS.items()}
_SET_BY_THE_SERVER = ("kind", "changed_by", "command_id")

AnyParty = Annotated[Party, Depends(current_party)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def body_model(cls: type[c.RegistryCommand]) -> type[BaseModel]:
    """The request body of a registry command: its fields but the ones the server sets (kind, sender, key)."""
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info in cls.model_fields.items()
                              if name not in _SET_BY_THE_SERVER}
    model: type[BaseModel] = create_model(f"{cls.__name__}Body", __base__=_Body, __doc__=cls.__doc__, **fields)
    return model


BODY_MODELS: list[type[BaseModel]] = []
"""The request bodies of the registry routes (each bounded as its command is; tests/unit/test_bounds.py checks)."""


def _route(cls: type[c.RegistryCommand], slug: str) -> None:
    body_cls = body_model(cls)
    BODY_MODELS.append(body_cls)

    async def post(body: Any, party: AnyParty, rt: Rt, key: IdempotencyKey = None) -> m.CommandResultPublic:
        return await run(rt, party, cls(command_id=command_id(party, key), changed_by=str(party), **dict(body)))

    post.__annotations__["body"] = body_cls
    post.__name__ = f"registry_{slug.replace('-', '_')}"
    who = "agency of the fact's region" + (" or the regulator" if cls in c.REGULATOR_REGISTRY_COMMANDS else "")
    router.post(f"/{slug}", status_code=201, response_model=m.CommandResultPublic,
                summary=f"{cls.__name__} ({who})", description=(cls.__doc__ or "").strip() or None)(post)


for _cls, _slug in REGISTRY_SLUGS.items():
    _route(_cls, _slug)


# --- reading a fact as the registry holds it now ------------------------------------------------------------------


def _reader(request: Request, party: AnyParty, rt: Rt) -> Party:
    """Agencies and the regulator read the registries; every regulator query is itself recorded."""
    if party.kind not in (PartyKind.AGENCY, PartyKind.REGULATOR):
        raise Forbidden(party, "read the registries (agencies and the regulator)")
    if party.kind is PartyKind.REGULATOR:
        with rt.pool.connection() as conn:
            record_regulator_query(conn, party, rt.clock(), request.method, request.url.path, request.url.query)
    return party


Reader = Annotated[Party, Depends(_reader)]
Key = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00/]+$")]


def _load(rt: Rt, cls: type[Aggregate], key: str) -> dict[str, Any]:
    id_for: Callable[[str], Any] = cls.id_for  # type: ignore[attr-defined]
    try:
        found = UnitOfWork(rt.application.store).get(cls, id_for(key))
    except NotFound:
        found = None
    if found is None:
        raise NOT_FOUND[cls](key)
    return found.model_dump(mode="json", exclude={"id", "head_hash"})


class RegistryFactPublic(BaseModel):
    """A registry fact as the authority holds it now: the aggregate's state (its fields as named in
    services/domain/registries.py) and its version."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: int


def _get_route(path: str, cls: type[Aggregate], what: str) -> None:
    def get(key: Key, party: Reader, rt: Rt) -> dict[str, Any]:
        return _load(rt, cls, key)

    get.__name__ = f"registry_get_{what.replace(' ', '_')}"
    router.get(path, response_model=RegistryFactPublic, summary=f"The {what} as registered now")(get)


for _path, _agg, _what in (
    ("/institutions/{key}", Institution, "institution"),
    ("/physicians/{key}", Physician, "physician"),
    ("/pharmacists/{key}", Pharmacist, "pharmacist"),
    ("/pharmacies/{key}", Pharmacy, "pharmacy"),
    ("/delivery-enterprises/{key}", DeliveryEnterprise, "delivery enterprise"),
    ("/drugs/{key}", DrugListing, "drug listing"),
    ("/chronic-diseases/{key}", ChronicDiseaseList, "chronic-disease list of a region"),
    ("/emergencies/{key}", EmergencyDeclarations, "emergency declarations of a region"),
):
    _get_route(_path, _agg, _what)


# --- who changed which fact when ------------------------------------------------------------------------------------


class RegistryChangePublic(BaseModel):
    """One registry change: which fact, what happened, who changed it, from which day, when it was recorded."""

    model_config = ConfigDict(frozen=True)

    seq: int
    fact_kind: str
    fact_id: str
    change: str
    changed_by: str
    effective_from: str | None
    recorded_at: datetime
    aggregate_id: str
    version: int
    event_id: str
    details: dict[str, Any]


class RegistryChangePage(BaseModel):
    items: list[RegistryChangePublic]
    next_after: int | None


@router.get("/changes", response_model=RegistryChangePage,
            summary="Who changed which registry fact when (regulator: all; an agency: its own region's changes)")
def changes(party: Reader, rt: Rt,
            fact_kind: Annotated[str | None, Query(max_length=40, pattern=r"^[a-z_]+$")] = None,
            fact_id: Annotated[str | None, Query(max_length=200)] = None,
            changed_by: Annotated[str | None, Query(max_length=200)] = None,
            after: Annotated[int, Query(ge=0, le=2**62)] = 0, limit: Limit = 100) -> RegistryChangePage:
    if party.kind is PartyKind.AGENCY:
        changed_by = str(party)  # an agency sees the changes it made; the regulator sees everyone's

    def query(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        return registry_changes(conn, rt.reads.traceability, fact_kind=fact_kind, fact_id=fact_id,
                                changed_by=changed_by, after=after, limit=limit)

    rows = rt.reads._read(query) or []
    items = [RegistryChangePublic(**{**row, "aggregate_id": str(row["aggregate_id"]),
                                     "effective_from": None if row["effective_from"] is None
                                     else row["effective_from"].isoformat()}) for row in rows]
    return RegistryChangePage(items=items, next_after=items[-1].seq if len(items) == limit else None)
