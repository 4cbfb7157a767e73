"""Bodies of the registry routes (``POST /registry/<what>``) for tests over HTTP: each call names fresh facts (and
registers in process what the change needs first), so the owner's call succeeds however often it is made."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from services.application import commands as c
from tests.support import unique_id
from tests.support.cast import METFORMIN, Cast, hospital_commands, ok, patient_commands, physician_command
from tests.support.cast import new_national_id as national_id

Body = Callable[[Cast], dict[str, Any]]


def _apply(cast: Cast, *commands: c.Command) -> None:
    for outcome in cast.app.apply_batch(list(commands)):
        ok(outcome)


def _hospital(cast: Cast) -> str:
    hospital = unique_id("H")
    _apply(cast, *hospital_commands(hospital, cast.region))
    return hospital


def _physician(cast: Cast, *, suspended: bool = False) -> str:
    physician = unique_id("DR")
    _apply(cast, physician_command(physician, cast.hospital, cast.region))
    if suspended:
        _apply(cast, c.SuspendPhysician(changed_by=cast.authority, physician_id=physician, reason="review"))
    return physician


def _third_party(cast: Cast, *, agreement: bool = False, suspended: bool = False) -> str:
    pharmacist = unique_id("RPH3")
    by = {"changed_by": cast.authority}
    _apply(cast, c.RegisterPharmacist(**by, pharmacist_id=pharmacist, third_party=True, region=cast.region,
                                      name="Chen", qualification_no="Q"))
    if agreement:
        _apply(cast, c.RecordCooperationAgreement(**by, pharmacist_id=pharmacist, hospital_id=cast.hospital,
                                                  agreement_no="CA"))
    if suspended:
        _apply(cast, c.SuspendPharmacist(**by, pharmacist_id=pharmacist, reason="review"))
    return pharmacist


def _pharmacy(cast: Cast, *, suspended: bool = False, drugs: tuple[str, ...] | None = None) -> str:
    pharmacy = cast.designate(unique_id("PH"), drugs=drugs)
    if suspended:
        _apply(cast, c.SuspendPharmacyAgreement(changed_by=cast.authority, pharmacy_id=pharmacy, reason="audit"))
    return pharmacy


def _patient(cast: Cast, *, chronic: tuple[str, ...] = ("E11",), filing: str | None = None,
             suspended: bool = False) -> str:
    patient = national_id(cast.region)
    _apply(cast, *patient_commands(patient, cast.region, chronic=chronic))
    by = {"changed_by": cast.authority, "patient_national_id": patient}
    if filing is not None:
        _apply(cast, c.RecordOffSiteFiling(**by, filing_no=filing, region=cast.other_region, valid_from=date(2024, 1, 1)))
    if suspended:
        _apply(cast, c.SuspendPatientForFraud(**by, reason="card lending"))
    return patient


def _emergency(cast: Cast) -> tuple[str, str]:
    region, no = cast.region, unique_id("EM")
    _apply(cast, c.DeclareEmergency(changed_by=cast.authority, region=region, declaration_no=no, title="epidemic",
                                    valid_from=date(2025, 1, 1)))
    return region, no


def _drug() -> str:
    return f"Z{unique_id('').replace('-', '')[-19:].upper():0>19}"[:20]


def _listed(cast: Cast) -> str:
    code = _drug()
    _apply(cast, c.ListDrug(changed_by="regulator:NHSA-TEST", drug_code=code, name="test drug", category="A"))  # type: ignore[arg-type]
    return code


def _disease(cast: Cast) -> str:
    """A fresh ICD-10-shaped code added to the region's list (Z00.0000 to Z99.9999)."""
    digits = f"{abs(hash(unique_id('d'))) % 10**6:06d}"
    code = f"Z{digits[:2]}.{digits[2:]}"
    _apply(cast, c.AddChronicDisease(changed_by=cast.authority, region=cast.region, disease_code=code, name="test"))
    return code


BODIES: dict[str, Body] = {
    "institutions": lambda cast: {"institution_id": unique_id("P"), "name": "Hospital", "institution_kind": "physical",
                                  "ownership": "public", "level": "secondary", "region": cast.region,
                                  "agreement_no": "AG-1"},
    "institution-changes": lambda cast: {"institution_id": _hospital(cast), "level": "secondary"},
    "institution-suspensions": lambda cast: {"institution_id": _hospital(cast), "reason": "audit"},
    "institution-reinstatements": lambda cast: _reinstate_institution(cast),  # noqa: PLW0108
    "physicians": lambda cast: physician_command(unique_id("DR"), cast.hospital, cast.region).model_dump(
        mode="json", exclude={"kind", "changed_by", "command_id", "effective_from"}),
    "physician-suspensions": lambda cast: {"physician_id": _physician(cast), "reason": "licence review"},
    "physician-reinstatements": lambda cast: {"physician_id": _physician(cast, suspended=True), "reason": "cleared"},
    "physician-keys": lambda cast: {"physician_id": _physician(cast), "public_key": "ab" * 32},
    "pharmacists": lambda cast: {"pharmacist_id": unique_id("RPH"), "employer_id": cast.hospital, "name": "Wang",
                                 "qualification_no": "Q"},
    "cooperation-agreements": lambda cast: {"pharmacist_id": _third_party(cast), "hospital_id": cast.hospital,
                                            "agreement_no": "CA-1"},
    "cooperation-agreement-ends": lambda cast: {"pharmacist_id": _third_party(cast, agreement=True),
                                                "hospital_id": cast.hospital, "reason": "ended"},
    "pharmacist-suspensions": lambda cast: {"pharmacist_id": _third_party(cast), "reason": "review"},
    "pharmacist-reinstatements": lambda cast: {"pharmacist_id": _third_party(cast, suspended=True), "reason": "ok"},
    "pharmacies": lambda cast: {"pharmacy_id": unique_id("PH"), "name": "Kangda", "pooling_region": cast.region,
                                "agreement_no": "A-1", "chronic_qualified": True},
    "pharmacy-suspensions": lambda cast: {"pharmacy_id": _pharmacy(cast), "reason": "audit"},
    "pharmacy-reinstatements": lambda cast: {"pharmacy_id": _pharmacy(cast, suspended=True), "reason": "cleared"},
    "pharmacy-drug-listings": lambda cast: {"pharmacy_id": _pharmacy(cast), "drug_codes": [METFORMIN]},
    "pharmacy-drug-delistings": lambda cast: {"pharmacy_id": _pharmacy(cast, drugs=(METFORMIN,)),
                                              "drug_codes": [METFORMIN]},
    "pharmacy-chronic-qualifications": lambda cast: {"pharmacy_id": _pharmacy(cast), "qualified": True},
    "pharmacy-payees": lambda cast: {"pharmacy_id": _pharmacy(cast), "payee_id": "SUPPLY-1"},
    "delivery-enterprises": lambda cast: {"enterprise_id": unique_id("DE"), "name": "Express", "region": cast.region,
                                          "gsp_qualified": True},
    "delivery-enterprise-gsp": lambda cast: {"enterprise_id": _enterprise(cast), "gsp_qualified": False,
                                             "reason": "lapsed"},
    "patient-suspensions": lambda cast: {"patient_national_id": _patient(cast), "reason": "card lending"},
    "patient-reinstatements": lambda cast: {"patient_national_id": _patient(cast, suspended=True), "reason": "ok"},
    "patient-insurance": lambda cast: {"patient_national_id": national_id(cast.region), "insured_region": cast.region,
                                       "insurance_type": "resident"},
    "patient-insurance-changes": lambda cast: {"patient_national_id": _patient(cast), "insured_region": cast.region,
                                               "insurance_type": "resident"},
    "chronic-entitlements": lambda cast: {"patient_national_id": _patient(cast, chronic=()), "disease_code": "I10"},
    "chronic-entitlement-revocations": lambda cast: {"patient_national_id": _patient(cast), "disease_code": "E11",
                                                     "reason": "review"},
    "off-site-filings": lambda cast: {"patient_national_id": _patient(cast), "filing_no": unique_id("BA"),
                                      "region": cast.other_region, "valid_from": "2025-01-01"},
    "off-site-filing-ends": lambda cast: _end_filing(cast),  # noqa: PLW0108
    "emergencies": lambda cast: {"region": cast.region, "declaration_no": unique_id("EM"), "title": "epidemic",
                                 "valid_from": "2025-01-01", "valid_until": "2025-02-01"},
    "emergency-ends": lambda cast: dict(zip(("region", "declaration_no"), _emergency(cast), strict=True),
                                        reason="over"),
    "drugs": lambda cast: {"drug_code": _drug(), "name": "test drug", "category": "B", "chronic_list": False},
    "drug-changes": lambda cast: {"drug_code": _listed(cast), "category": "C"},
    "payment-standards": lambda cast: {"drug_code": METFORMIN, "region": cast.region, "amount": "30.00"},
    "price-caps": lambda cast: {"drug_code": METFORMIN, "region": cast.region, "cap": "30.00"},
    "chronic-diseases": lambda cast: {"region": cast.region, "disease_code": f"Z{abs(hash(unique_id('d'))) % 100:02d}."
                                      f"{abs(hash(unique_id('e'))) % 10**4:04d}", "name": "test"},
    "chronic-disease-removals": lambda cast: {"region": cast.region, "disease_code": _disease(cast), "reason": "x"},
}
"""A fresh body per registry path (the cast's region; the agency of that region may send every one of them)."""


def _reinstate_institution(cast: Cast) -> dict[str, Any]:
    hospital = _hospital(cast)
    _apply(cast, c.SuspendInstitutionAgreement(changed_by=cast.authority, institution_id=hospital, reason="audit"))
    return {"institution_id": hospital, "reason": "cleared"}


def _enterprise(cast: Cast) -> str:
    enterprise = unique_id("DE")
    _apply(cast, c.RegisterDeliveryEnterprise(changed_by=cast.authority, enterprise_id=enterprise, name="Express",
                                              region=cast.region, gsp_qualified=True))
    return enterprise


def _end_filing(cast: Cast) -> dict[str, Any]:
    filing = unique_id("BA")
    return {"patient_national_id": _patient(cast, filing=filing), "filing_no": filing, "reason": "moved back"}


def registry_key(cast: Cast, what: str) -> str:
    """The id of a fact of the cast for ``GET /registry/<what>/<key>``."""
    if what == "emergencies":
        return _emergency(cast)[0]
    return {"institutions": cast.hospital, "physicians": cast.physician, "pharmacists": cast.pharmacist,
            "pharmacies": cast.pharmacy, "delivery-enterprises": cast.delivery_enterprise, "drugs": METFORMIN,
            "chronic-diseases": cast.region}[what]
