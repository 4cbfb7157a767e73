"""Authorisation matrix: every endpoint × every party kind (+ no key, a bad key, and the same kind of another
tenant), each with the status it must answer. Ids a party may not see answer 404, exactly like unknown ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api import create_app
from services.api.routes.registry import REGISTRY_SLUGS
from services.application import RxTrail
from services.application import commands as c
from services.infra.settings import Settings
from tests.support import unique_id
from tests.support.flows import (
    OTHER_REGION,
    Actors,
    Cast,
    api_keys,
    dispense_body,
    prescription_body,
    register_cast,
    settle_command,
    trace_codes,
    visit_body,
)
from tests.support.read_side import read_side, wait_caught_up
from tests.support.registry_http import BODIES as REGISTRY_BODIES
from tests.support.registry_http import registry_key

CALLERS = ("anonymous", "bad_key", "hospital", "pharmacist", "pharmacy", "agency", "regulator", "other_tenant")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {rx}, {visit} and {no} are filled from the prepared state
    owner: str  # the party kind the endpoint serves
    state: str | None = None  # prescription state the call needs: issued, approved, routed, accepted, ...
    body: Callable[[Actors, dict[str, str]], dict[str, Any]] | None = None
    ok: int = 200
    tenant_scoped: bool = True  # False: a list that simply shows the other tenant its own (empty) data
    other_tenant: int | None = None  # when another tenant's answer is neither 404 nor the owner's
    also: tuple[str, ...] = ()  # other party kinds it serves as it serves the owner (registries: the regulator)


def _visit(a: Actors, s: dict[str, str]) -> dict[str, Any]:
    return visit_body(a.cast)


def _rx_body(a: Actors, s: dict[str, str]) -> dict[str, Any]:
    return prescription_body(s["visit"], cast=a.cast)


def _const(body: dict[str, Any]) -> Callable[[Actors, dict[str, str]], dict[str, Any]]:
    return lambda a, s: body


ENDPOINTS = (
    # another hospital naming this hospital's physician: R2 (physician not registered with it)
    Endpoint("POST", "/hospital/visits", "hospital", body=_visit, ok=201, other_tenant=409),
    Endpoint("GET", "/hospital/visits", "hospital", tenant_scoped=False),
    Endpoint("GET", "/hospital/visits/{visit}", "hospital", state="visit"),
    Endpoint("POST", "/hospital/prescriptions", "hospital", state="visit", body=_rx_body, ok=201),
    Endpoint("GET", "/hospital/prescriptions", "hospital", tenant_scoped=False),
    Endpoint("GET", "/hospital/prescriptions/{rx}", "hospital", state="issued"),
    Endpoint("POST", "/hospital/prescriptions/{rx}/cancellation", "hospital", state="issued",
             body=_const({"reason": "patient asked", "cancelled_by": "DR1"})),
    Endpoint("POST", "/hospital/prescriptions/{rx}/routing", "hospital", state="approved",
             body=lambda a, s: {"pharmacy_id": a.cast.pharmacy, "basis": "patient_choice"}),
    # R19: issue grants the longest validity, so any later end is refused by the rule (409) for the owner
    Endpoint("POST", "/hospital/prescriptions/{rx}/validity", "hospital", state="approved",
             body=lambda a, s: {"physician_id": a.cast.physician, "valid_until": "2999-01-01T00:00:00Z",
                                "reason": "travel"}, ok=409),
    # a hospital dispensing a prescription it routed to itself
    Endpoint("POST", "/hospital/prescriptions/{rx}/acceptance", "hospital", state="own_routed", body=_const({})),
    Endpoint("POST", "/hospital/prescriptions/{rx}/dispenses", "hospital", state="own_accepted",
             body=lambda a, s: dispense_body(4), ok=201),
    Endpoint("POST", "/hospital/prescriptions/{rx}/dispenses/1/withdrawal", "hospital", state="own_dispensed",
             body=_const({"reason": "wrong pack"})),
    Endpoint("POST", "/hospital/prescriptions/{rx}/pack-returns", "hospital", state="own_dispensed",
             body=lambda a, s: {"trace_codes": [s["code"]], "reason": "unsold"}),
    Endpoint("POST", "/hospital/prescriptions/{rx}/collection", "hospital", state="own_dispensed",
             body=_const({"verification_method": "face_recognition"})),
    Endpoint("GET", "/pharmacist/review-queue", "pharmacist", tenant_scoped=False),
    Endpoint("GET", "/pharmacist/prescriptions/{rx}", "pharmacist", state="issued"),
    Endpoint("POST", "/pharmacist/prescriptions/{rx}/approval", "pharmacist", state="issued", body=_const({})),
    Endpoint("POST", "/pharmacist/prescriptions/{rx}/rejection", "pharmacist", state="issued",
             body=_const({"reasons": ["interaction"]})),
    Endpoint("GET", "/pharmacy/feed", "pharmacy", tenant_scoped=False),
    Endpoint("GET", "/pharmacy/prescriptions/{rx}", "pharmacy", state="routed"),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/acceptance", "pharmacy", state="routed", body=_const({})),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/return", "pharmacy", state="routed",
             body=_const({"reason": "out of stock"})),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/dispenses", "pharmacy", state="accepted",
             body=lambda a, s: dispense_body(4), ok=201),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/dispenses/1/withdrawal", "pharmacy", state="dispensed",
             body=_const({"reason": "wrong pack"})),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/pack-returns", "pharmacy", state="dispensed",
             body=lambda a, s: {"trace_codes": [s["code"]], "reason": "unsold"}),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/delivery", "pharmacy", state="dispensed",
             body=_const({"delivery_enterprise_id": "DE1", "delivery_fee": "6.00", "fee_disclosed": True})),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/delivered", "pharmacy", state="delivery_arranged",
             body=_const({"delivery_enterprise_id": "DE1"})),
    Endpoint("POST", "/pharmacy/prescriptions/{rx}/collection", "pharmacy", state="dispensed",
             body=_const({"verification_method": "face_recognition"})),
    Endpoint("GET", "/agency/statements", "agency", tenant_scoped=False),
    Endpoint("GET", "/agency/prescriptions/{rx}", "agency", state="issued"),
    Endpoint("POST", "/agency/prescriptions/{rx}/audit-refusals", "agency", state="settled",
             body=_const({"amount": "1.00", "reason": "audit", "audit_ref": "A1"}), ok=201),
    Endpoint("POST", "/agency/prescriptions/{rx}/clawbacks", "agency", state="settled",
             body=_const({"amount": "1.00", "reason": "audit", "audit_ref": "A2"}), ok=201),
    Endpoint("POST", "/agency/prescriptions/{rx}/reversals", "agency", state="settled",
             body=_const({"fund": "1.00", "personal_account": "0.00", "reason": "error", "reversal_ref": "RV1"}),
             ok=201),
    # no failure recorded: the owner is refused (409, no open failure), another agency does not see it (404)
    Endpoint("POST", "/agency/prescriptions/{rx}/settlement-retry", "agency", state="settled",
             body=_const({"reason": "registry fixed"}), ok=409),
    Endpoint("POST", "/agency/prescriptions/{rx}/settlement-write-off", "agency", state="settled",
             body=_const({"reason": "not payable"}), ok=409),
    Endpoint("GET", "/agency/settlement-issues", "agency", tenant_scoped=False),
    # the consultation is not settled (R15: not before a prescription is approved): 422
    Endpoint("POST", "/agency/visits/{visit}/audit-refusals", "agency", state="visit",
             body=_const({"amount": "1.00", "reason": "audit", "audit_ref": "A3"}), ok=422),
    Endpoint("POST", "/agency/visits/{visit}/clawbacks", "agency", state="visit",
             body=_const({"amount": "1.00", "reason": "audit", "audit_ref": "A4"}), ok=422),
    Endpoint("POST", "/agency/visits/{visit}/reversals", "agency", state="visit",
             body=_const({"reason": "error", "reversal_ref": "RV2"}), ok=422),
    Endpoint("POST", "/agency/visits/{visit}/settlement-retry", "agency", state="visit",
             body=_const({"reason": "registry fixed"}), ok=409),
    Endpoint("POST", "/agency/visits/{visit}/settlement-write-off", "agency", state="visit",
             body=_const({"reason": "not payable"}), ok=409),
    Endpoint("GET", "/regulator/prescriptions", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/prescriptions/{rx}/trail", "regulator", state="issued", tenant_scoped=False),
    Endpoint("GET", "/regulator/prescriptions/{rx}/verification", "regulator", state="issued", tenant_scoped=False),
    Endpoint("GET", "/regulator/flags", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/queries", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/findings", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/findings/FR-TC-REPEAT-000000000000", "regulator", ok=404, tenant_scoped=False),
    Endpoint("GET", "/regulator/dashboard", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/statements", "regulator", tenant_scoped=False),
    Endpoint("GET", "/regulator/settlement-issues", "regulator", tenant_scoped=False),
)


def _registry_endpoint(cls: type[c.RegistryCommand], slug: str) -> Endpoint:
    """POST /registry/<slug>: the agency of the cast's region (403 for another region's agency); the regulator too
    where it keeps the catalog (the national catalog: the regulator alone, any regulator)."""
    body = lambda a, s: REGISTRY_BODIES[slug](a.cast)  # noqa: E731
    if cls in (c.ListDrug, c.ChangeDrugListing):
        return Endpoint("POST", f"/registry/{slug}", "regulator", body=body, ok=201, other_tenant=201)
    return Endpoint("POST", f"/registry/{slug}", "agency", body=body, ok=201, other_tenant=403,
                    also=("regulator",) if cls in c.REGULATOR_REGISTRY_COMMANDS else ())


ENDPOINTS += tuple(_registry_endpoint(cls, slug) for cls, slug in REGISTRY_SLUGS.items()) + tuple(
    Endpoint("GET", f"/registry/{what}/{{key}}", "agency", state=f"registry:{what}", also=("regulator",),
             tenant_scoped=False)
    for what in ("institutions", "physicians", "pharmacists", "pharmacies", "delivery-enterprises", "drugs",
                 "chronic-diseases", "emergencies")
) + (Endpoint("GET", "/registry/changes", "regulator", also=("agency",), tenant_scoped=False),)


def expected(endpoint: Endpoint, caller: str) -> int:
    if caller in ("anonymous", "bad_key"):
        return 401
    if caller == "other_tenant":
        if endpoint.other_tenant is not None:
            return endpoint.other_tenant
        if not endpoint.tenant_scoped:
            return endpoint.ok
        return 404
    if caller != endpoint.owner and caller not in endpoint.also:
        return 403
    return endpoint.ok


def test_every_endpoint_is_in_the_matrix() -> None:
    app = create_app(Settings(database_url="postgresql://unused/none"))
    spec = app.openapi()
    served = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
              if not path.startswith(("/health", "/asyncapi", "/rules"))}  # public: see test_rules_are_public
    covered = {(e.method, e.path.replace("{rx}", "{prescription_id}").replace("{visit}", "{visit_id}")
                .replace("/dispenses/1/", "/dispenses/{dispense_no}/")
                .replace("/findings/FR-TC-REPEAT-000000000000", "/findings/{finding_id}")) for e in ENDPOINTS}
    assert served == covered


@pytest.fixture(scope="module")
def world(database: str, kafka_bootstrap: str, application: RxTrail) -> Iterator[tuple[Actors, dict[str, str]]]:
    cast: Cast = register_cast(application)
    foreign_pharmacist = unique_id("PHMX")
    assert application.handle(c.RegisterPharmacist(changed_by=cast.authority, pharmacist_id=foreign_pharmacist,
                                                   employer_id=cast.other_hospital, name="Ph X",
                                                   qualification_no="QX")).ok
    keys = api_keys(database, f"hospital:{cast.hospital}", f"hospital:{cast.other_hospital}",
                    f"pharmacist:{cast.pharmacist}", f"pharmacist:{foreign_pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"pharmacy:{cast.other_pharmacy}", f"agency:{cast.region}",
                    f"agency:{OTHER_REGION}", "regulator:REG-M", "regulator:REG-M2")
    tokens = {
        "hospital": keys[f"hospital:{cast.hospital}"],
        "pharmacist": keys[f"pharmacist:{cast.pharmacist}"],
        "pharmacy": keys[f"pharmacy:{cast.pharmacy}"],
        "agency": keys[f"agency:{cast.region}"],
        "regulator": keys["regulator:REG-M"],
        "bad_key": "rx_0123456789abcdef_" + "x" * 40,
        "other:hospital": keys[f"hospital:{cast.other_hospital}"],
        "other:pharmacist": keys[f"pharmacist:{foreign_pharmacist}"],
        "other:pharmacy": keys[f"pharmacy:{cast.other_pharmacy}"],
        "other:agency": keys[f"agency:{OTHER_REGION}"],
        "other:regulator": keys["regulator:REG-M2"],
    }
    with read_side(database, kafka_bootstrap) as settings, \
            TestClient(create_app(settings, application=application)) as client:
        yield Actors(client, cast, keys), tokens


def prepare(actors: Actors, application: RxTrail, state: str | None) -> dict[str, str]:
    if state is None:
        return {}
    if state == "visit":
        return {"visit": actors.visit()}
    if state.startswith("registry:"):
        return {"key": registry_key(actors.cast, state.removeprefix("registry:"))}
    steps = {"issued": actors.issue, "approved": actors.approved, "routed": actors.routed,
             "accepted": actors.accepted}
    if state in steps:
        return {"rx": steps[state]()}
    codes = trace_codes(4)
    if state.startswith("own_"):
        rx = actors.approved()
        r = actors.post(actors.hospital, f"/hospital/prescriptions/{rx}/routing",
                        {"pharmacy_id": None, "basis": "routing_rule"})
        assert r.status_code == 200, r.text
        if state != "own_routed":
            assert actors.post(actors.hospital, f"/hospital/prescriptions/{rx}/acceptance", {}).status_code == 200
        if state == "own_dispensed":
            r = actors.post(actors.hospital, f"/hospital/prescriptions/{rx}/dispenses", dispense_body(4, codes))
            assert r.status_code == 201, r.text
        return {"rx": rx, "code": codes[0]}
    rx = actors.accepted()
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(4, codes))
    assert r.status_code == 201, r.text
    if state == "delivery_arranged":
        actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/delivery",
                    {"delivery_enterprise_id": "DE1", "delivery_fee": "6.00", "fee_disclosed": True})
    if state == "settled":
        actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/collection", {"verification_method": "e_voucher"})
        patient = actors.get(actors.hospital, f"/hospital/prescriptions/{rx}").json()["patient_ref"]
        assert application.handle(settle_command(rx, patient)).ok
    return {"rx": rx, "code": codes[0]}


@pytest.mark.broker_neutral  # Kafka only builds the world's read side; who may call what is the API's alone
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_authorisation(world: tuple[Actors, dict[str, str]], application: RxTrail, endpoint: Endpoint,
                       caller: str) -> None:
    actors, tokens = world
    state = prepare(actors, application, endpoint.state)
    path = endpoint.path.format(**state)
    body = endpoint.body(actors, state) if endpoint.body else None
    headers = {}
    if caller == "other_tenant":
        headers["Authorization"] = f"Bearer {tokens['other:' + endpoint.owner]}"
    elif caller != "anonymous":
        headers["Authorization"] = f"Bearer {tokens[caller]}"
    response = actors.client.request(endpoint.method, path, json=body, headers=headers)
    assert response.status_code == expected(endpoint, caller), response.text
    if response.status_code >= 400:
        assert response.json()["error"]


def test_cross_tenant_reads_show_nothing_of_the_other(world: tuple[Actors, dict[str, str]], database: str) -> None:
    actors, tokens = world
    rx = actors.routed()
    wait_caught_up(database)  # the lists read the read side: it shows rx (to its owner) before anything is compared
    own = {p["prescription_id"] for p in actors.get(tokens["hospital"], "/hospital/prescriptions", limit=500)
           .json()["items"]}
    theirs = {p["prescription_id"] for p in actors.get(tokens["other:hospital"], "/hospital/prescriptions", limit=500)
              .json()["items"]}
    assert rx in own and rx not in theirs
    feed = actors.get(tokens["other:pharmacy"], "/pharmacy/feed", limit=500).json()["items"]
    assert rx not in {i["prescription_id"] for i in feed}
    queue = actors.get(tokens["other:pharmacist"], "/pharmacist/review-queue", limit=500).json()["items"]
    assert queue == []


@pytest.mark.parametrize("caller", CALLERS)
def test_rules_are_public(world: tuple[Actors, dict[str, str]], caller: str) -> None:
    """The rule catalogue holds no party's data: every caller, with or without a key (a bad one too), reads it."""
    actors, tokens = world
    headers = {} if caller == "anonymous" else {
        "Authorization": f"Bearer {tokens['other:hospital' if caller == 'other_tenant' else caller]}"}
    response = actors.client.get("/rules", headers=headers)
    assert response.status_code == 200, response.text
    rules = {r["id"]: r for r in response.json()}
    assert {"R1", "R4", "R8"} <= set(rules) and rules["R8"]["kind"] in {"reject", "reject+flag"}
    assert any(p["name"] for r in rules.values() for p in r["parameters"])
