"""Issue 13's counter-examples on the visit/issue/review side, end to end over HTTP against the real PostgreSQL and
Kafka: every fact a rule reads comes from the authority's registries (R17), never from the hospital's request.

The module registers its own parties through the registry commands (its database is its own), then drives the
hospital and pharmacist APIs: R4 (chronic list, declared emergencies, running supply per patient and generic drug),
R12 (insured region from the registry, 备案 recorded on off-site visits), R1/R16 on the issue day, R2 (Ed25519
signature over the content), R18 (cooperation agreements).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from events.encounter import FollowUpVisitRecorded
from services.api import create_app
from services.application import RxTrail
from services.application import commands as c
from services.domain.clock import FixedClock
from services.domain.signature import public_key_hex, sign_prescription_request
from tests.support import unique_id
from tests.support.cast import new_national_id
from tests.support.domain import signing_key
from tests.support.flows import api_keys, auth, open_application
from tests.support.read_side import read_side

REGION = "220100"
OTHER_REGION = "370100"
EMERGENCY_REGION = "532300"
REGULATOR = "regulator:REG-ISSUE"
METFORMIN = "XA10BAA001A001010101"
METFORMIN_OTHER_MAKER = "XA10BAA001A002010101"
AMLODIPINE = "XC08CAA001A001010101"


def _ok(outcome: Any) -> Any:
    assert outcome.ok, f"{outcome.error} {outcome.rule_id}: {outcome.reason}"
    return outcome


@dataclass
class Parties:
    """One internet hospital per region with its physical institution, an offline institution where patients were
    first diagnosed, a physician with a registered key, the hospital's pharmacist and a third-party pharmacist."""

    app: RxTrail
    region: str = REGION
    tag: str = field(default_factory=lambda: unique_id("I"))

    @property
    def hospital(self) -> str:
        return f"H-{self.tag}"

    @property
    def physical(self) -> str:
        return f"P-{self.tag}"

    @property
    def offline(self) -> str:
        return f"OFF-{self.tag}"

    @property
    def physician(self) -> str:
        return f"DR-{self.tag}"

    @property
    def pharmacist(self) -> str:
        return f"RPH-{self.tag}"

    @property
    def third_party(self) -> str:
        return f"RPH3-{self.tag}"

    def register(self) -> Parties:
        agency = f"agency:{self.region}"
        start = date.today() - timedelta(days=400)
        physical = {"institution_kind": "physical", "ownership": "public", "level": "tertiary", "region": self.region,
                    "changed_by": agency, "effective_from": start}
        commands: list[c.Command] = [
            c.RegisterInstitution(institution_id=self.physical, name="People's Hospital", agreement_no="AG-P",
                                  **physical),
            c.RegisterInstitution(institution_id=self.offline, name="District Hospital", agreement_no="AG-O",
                                  **physical),
            c.RegisterInstitution(institution_id=self.hospital, name="People's Internet Hospital",
                                  agreement_no="AG-H", **{**physical, "institution_kind": "internet"},
                                  physical_institution_id=self.physical),
            c.RegisterPhysician(physician_id=self.physician, hospital_id=self.hospital, name="Dr Li",
                                qualification_no="Q-1", physician_code=f"D{self.tag}"[:20],
                                public_key=public_key_hex(signing_key(self.physician)), changed_by=agency),
            c.RegisterPharmacist(pharmacist_id=self.pharmacist, employer_id=self.hospital, name="Wang",
                                 qualification_no="Q-2", changed_by=agency),
            c.RegisterPharmacist(pharmacist_id=self.third_party, third_party=True, company_id="ReviewCo",
                                 region=self.region, name="Chen", qualification_no="Q-3", changed_by=agency),
        ]
        for outcome in self.app.apply_batch(commands):
            _ok(outcome)
        for code, name in (("E11", "type 2 diabetes"), ("I10", "hypertension")):
            outcome = self.app.handle(c.AddChronicDisease(region=self.region, disease_code=code, name=name,
                                                          changed_by=REGULATOR, effective_from=start))
            assert outcome.ok or outcome.error == "IllegalTransition", outcome.reason  # listed already
        return self

    def insure(self, region: str | None = None, *, filing_for: str | None = None) -> str:
        """A new patient insured in ``region`` (the parties' own by default); returns the national id."""
        national_id = new_national_id(region or self.region)
        insured = region or self.region
        _ok(self.app.handle(c.RegisterPatientInsurance(
            patient_national_id=national_id, insured_region=insured, insurance_type="employee",
            changed_by=f"agency:{insured}")))
        if filing_for is not None:
            _ok(self.app.handle(c.RecordOffSiteFiling(
                patient_national_id=national_id, filing_no=unique_id("F"), region=filing_for,
                valid_from=date.today() - timedelta(days=10), changed_by=f"agency:{insured}")))
        return national_id


class Hospital:
    """The hospital's HIS and its pharmacists over HTTP."""

    def __init__(self, client: TestClient, parties: Parties, keys: dict[str, str]) -> None:
        self.client, self.p = client, parties
        self.key = keys[f"hospital:{parties.hospital}"]
        self.pharmacist_key = keys[f"pharmacist:{parties.pharmacist}"]
        self.third_party_key = keys[f"pharmacist:{parties.third_party}"]

    def post(self, key: str, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(path, json=body, headers=auth(key))

    def visit(self, national_id: str, *, diagnosis: str = "E11.9", **extra: Any) -> Any:
        body = {
            "visit_ref": unique_id("V"), "patient": {"national_id": national_id, "name": "Zhang San"},
            "physician_id": self.p.physician, "physician_signature": "visit-sig", "diagnosis_code": diagnosis,
            "diagnosis_name": "follow-up", "original_diagnosis_code": diagnosis,
            "original_diagnosis_date": (date.today() - timedelta(days=30)).isoformat(),
            "original_institution_id": self.p.offline, "verification_method": "e_voucher",
            "consultation_fee": "9.00", **extra,  # R15: within every region's tertiary price
        }
        return self.post(self.key, "/hospital/visits", body)

    def visited(self, national_id: str, **kw: Any) -> str:
        r = self.visit(national_id, **kw)
        assert r.status_code == 201, r.text
        return str(r.json()["aggregate_id"])

    def body(self, encounter: str, *, drug: str = METFORMIN, days: int = 28, diagnosis: str = "E11.9",
             signed: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prescription_ref": unique_id("RX"), "encounter_id": encounter, "physician_signature": "sig-ok",
            "items": [{"drug_code": drug, "name": "drug", "spec": "0.5g*30", "quantity": 4, "days_supply": days,
                       "unit_price": "11.00", "category": "A"}],
            "first_visit_drug_codes": [drug],
        }
        if signed:
            body["physician_signature"] = sign_prescription_request(
                signing_key(self.p.physician), body, hospital_id=self.p.hospital, physician_id=self.p.physician,
                diagnosis_code=diagnosis)
        return body

    def issue(self, encounter: str, **kw: Any) -> Any:
        return self.post(self.key, "/hospital/prescriptions", self.body(encounter, **kw))


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC))


@pytest.fixture(scope="module")
def application(database: str, clock: FixedClock) -> Iterator[RxTrail]:
    """The module's application on a clock the tests can move (R1 on a later issue day)."""
    app = open_application(database, clock=clock)
    yield app
    app.close()


@pytest.fixture(scope="module")
def parties(application: RxTrail) -> Parties:
    return Parties(application).register()


@pytest.fixture(scope="module")
def emergency_parties(application: RxTrail) -> Parties:
    return Parties(application, region=EMERGENCY_REGION).register()


@pytest.fixture(scope="module")
def keys(database: str, parties: Parties, emergency_parties: Parties) -> dict[str, str]:
    return api_keys(database, *(f"{kind}:{getattr(p, attr)}" for p in (parties, emergency_parties)
                                for kind, attr in (("hospital", "hospital"), ("pharmacist", "pharmacist"),
                                                   ("pharmacist", "third_party"))))


@pytest.fixture(scope="module")
def client(database: str, kafka_bootstrap: str, application: RxTrail) -> Iterator[TestClient]:
    with read_side(database, kafka_bootstrap) as settings, \
            TestClient(create_app(settings, application=application)) as client:
        yield client


@pytest.fixture(scope="module")
def his(client: TestClient, parties: Parties, keys: dict[str, str]) -> Hospital:
    return Hospital(client, parties, keys)


def _refused(r: Any, rule: str) -> dict[str, Any]:
    assert r.status_code == 409, r.text
    body: dict[str, Any] = r.json()
    assert body["rule"] == rule, body
    return body


# --- R4 ---------------------------------------------------------------------------------------------------


def test_r4_three_56_day_metformin_prescriptions_from_one_visit_are_not_168_days(his: Hospital) -> None:
    """Counter-example: one visit, three metformin prescriptions of 56 days each — all accepted (168 days)."""
    encounter = his.visited(his.p.insure())
    assert his.issue(encounter, days=56).status_code == 201
    body = _refused(his.issue(encounter, days=56), "R4")
    assert body["running_days"] == "56" and body["generic_code"] == "XA10BA001" and "still running" in body["reason"]
    _refused(his.issue(encounter, drug=METFORMIN_OTHER_MAKER, days=7), "R4")  # same generic, another maker
    assert his.issue(encounter, drug=AMLODIPINE, days=56).status_code == 201  # another generic drug


def test_r4_supply_counts_per_patient_across_visits_and_frees_when_rejected(his: Hospital) -> None:
    patient = his.p.insure()
    first = his.issue(his.visited(patient), days=56)
    assert first.status_code == 201
    _refused(his.issue(his.visited(patient), days=28), "R4")  # a second visit does not reset the count
    rx = first.json()["aggregate_id"]
    r = his.post(his.pharmacist_key, f"/pharmacist/prescriptions/{rx}/rejection", {"reasons": ["duplicate"]})
    assert r.status_code == 200, r.text
    assert his.issue(his.visited(patient), days=56).status_code == 201  # the rejected one's days are free
    assert his.issue(his.visited(his.p.insure()), days=56).status_code == 201  # another patient: own ledger


def test_r4_a_cold_gets_no_long_prescription(his: Hospital) -> None:
    """Counter-example: J06.9, a cold, with 56 days was accepted."""
    encounter = his.visited(his.p.insure(), diagnosis="J06.9")
    body = _refused(his.issue(encounter, days=56, diagnosis="J06.9"), "R4")
    assert body["diagnosis_code"] == "J06.9" and "chronic disease list" in body["reason"]
    assert his.issue(encounter, days=7, diagnosis="J06.9").status_code == 201


def test_r4_the_hospital_cannot_declare_an_emergency(his: Hospital) -> None:
    """Counter-example: the emergency allowing more days was a boolean the hospital set on its prescription."""
    encounter = his.visited(his.p.insure())
    body = {**his.body(encounter, days=84), "emergency_declared": True}
    r = his.post(his.key, "/hospital/prescriptions", body)
    assert r.status_code == 422 and "emergency_declared" in r.text
    _refused(his.issue(encounter, days=84), "R4")


def test_r4_90_days_only_while_the_authority_declares_an_emergency(
    client: TestClient, emergency_parties: Parties, keys: dict[str, str], application: RxTrail
) -> None:
    his = Hospital(client, emergency_parties, keys)
    _refused(his.issue(his.visited(his.p.insure()), days=90), "R4")
    _ok(application.handle(c.DeclareEmergency(region=EMERGENCY_REGION, declaration_no=unique_id("EM"),
                                              title="public-health emergency", valid_from=date.today(),
                                              valid_until=date.today() + timedelta(days=1), changed_by=REGULATOR)))
    encounter = his.visited(his.p.insure())
    r = his.issue(encounter, days=90)
    assert r.status_code == 201, r.text
    _refused(his.issue(his.visited(his.p.insure()), days=91), "R4")


def test_r4_concurrent_issues_for_one_patient_cannot_both_pass(his: Hospital, application: RxTrail) -> None:
    """The ledger is saved with the prescription: of eight 56-day issues at once for one patient, one passes."""
    encounter = his.visited(his.p.insure())
    barrier = threading.Barrier(8)
    outcomes: list[Any] = []

    def issue() -> None:
        body = his.body(encounter, days=56)
        command = c.IssuePrescription.model_validate({"hospital_id": his.p.hospital, **body})
        barrier.wait()
        outcomes.append(application.handle(command))

    threads = [threading.Thread(target=issue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.rule_id or "ok" for o in outcomes) == ["R4"] * 7 + ["ok"]


# --- R12 / R17 the patient's insurance facts ----------------------------------------------------------------


def test_r12_insured_region_and_type_come_from_the_registry(his: Hospital, application: RxTrail) -> None:
    """Counter-example: insured region and insurance type were whatever the hospital declared on the visit."""
    patient = his.p.insure()
    body = _refused(his.visit(patient, insured_region=OTHER_REGION), "R17")
    assert body["field"] == "insured_region" and body["registered"] == REGION
    _refused(his.visit(patient, insurance_type="resident"), "R17")
    encounter = his.visited(patient, insured_region=REGION, insurance_type="employee")  # repeating is fine
    [visit] = application.history(UUID(encounter))
    assert isinstance(visit, FollowUpVisitRecorded)
    assert (visit.insured_region, visit.insurance_type, visit.business_type) == (REGION, "employee", "internet")
    _refused(his.visit(new_national_id(REGION)), "R17")  # no insurance registered: no visit


def test_r12_off_site_visit_records_whether_a_filing_was_valid(his: Hospital, application: RxTrail) -> None:
    """Counter-example: off-site patients settled with fund money with no 备案 at all; the visit now records the
    registry's answer on its day, which the settlement reads."""
    without = his.visited(his.p.insure(OTHER_REGION))
    with_filing = his.visited(his.p.insure(OTHER_REGION, filing_for=REGION))
    elsewhere = his.visited(his.p.insure(OTHER_REGION, filing_for=EMERGENCY_REGION))
    recorded = {}
    for name, encounter in (("without", without), ("with", with_filing), ("elsewhere", elsewhere)):
        [visit] = application.history(UUID(encounter))
        assert isinstance(visit, FollowUpVisitRecorded) and visit.business_type == "off_site"
        recorded[name] = visit.offsite_filing_valid
    assert recorded == {"without": False, "with": True, "elsewhere": False}
    shown = his.client.get(f"/hospital/visits/{without}", headers=auth(his.key))
    assert shown.status_code == 200 and shown.json()["offsite_filing_valid"] is False


# --- R1 / R16 / R2 / R18 ---------------------------------------------------------------------------------------


def test_r16_the_original_diagnosis_cannot_be_the_internet_hospitals_own(his: Hospital) -> None:
    """Counter-example: the "offline" institution could be the internet hospital itself."""
    patient = his.p.insure()
    _refused(his.visit(patient, original_institution_id=his.p.hospital), "R16")
    _refused(his.visit(patient, original_institution_id=unique_id("NOT-REGISTERED")), "R16")
    assert his.visit(patient, original_institution_id=his.p.physical).status_code == 201


def test_r2_a_free_text_signature_is_refused(his: Hospital) -> None:
    encounter = his.visited(his.p.insure())
    body = _refused(his.issue(encounter, signed=False), "R2")
    assert "does not verify" in body["reason"]
    tampered = his.body(encounter)
    tampered["items"][0]["quantity"] = 8  # signed for 4 boxes
    _refused(his.post(his.key, "/hospital/prescriptions", tampered), "R2")
    assert his.issue(encounter).status_code == 201


def test_r18_a_third_party_pharmacist_approves_only_under_a_cooperation_agreement(
    his: Hospital, application: RxTrail
) -> None:
    """Counter-example: any third-party pharmacist approved any hospital's prescriptions."""
    rx = his.issue(his.visited(his.p.insure())).json()["aggregate_id"]
    r = his.post(his.third_party_key, f"/pharmacist/prescriptions/{rx}/approval", {})
    assert r.status_code in (404, 409), r.text  # not even shown to it; a refusal names R18
    if r.status_code == 409:
        assert r.json()["rule"] == "R18"
    _ok(application.handle(c.RecordCooperationAgreement(
        pharmacist_id=his.p.third_party, hospital_id=his.p.hospital, agreement_no=unique_id("CA"),
        changed_by=f"agency:{his.p.region}")))
    r = his.post(his.third_party_key, f"/pharmacist/prescriptions/{rx}/approval", {})
    assert r.status_code == 200, r.text


def test_r1_a_prescription_issued_200_days_after_its_visit_is_refused(his: Hospital, clock: FixedClock) -> None:
    """Counter-example: R1 was checked only at the visit: a prescription issued 200 days after its visit (original
    diagnosis 280 days old) was accepted."""
    encounter = his.visited(his.p.insure(), original_diagnosis_date=(date.today() - timedelta(days=80)).isoformat())
    assert his.issue(encounter).status_code == 201
    start = clock.now()
    clock.advance(timedelta(days=200))
    try:
        body = _refused(his.issue(encounter), "R1")
        assert body["original_diagnosis_date"] == (date.today() - timedelta(days=80)).isoformat()
    finally:
        clock.set(start)
