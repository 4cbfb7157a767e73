"""The registries (issue 13, R17): every change records who made it and from when; facts answer "as of day D";
events written before the registries recorded who changed them load through upcasters with their hashes intact."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from events import from_json, to_json
from events.base import GENESIS_HASH, CatalogCategory, InsuranceType, Ownership
from events.registries import (
    UNRECORDED,
    InstitutionKind,
    InstitutionLevel,
    PharmacistRegistered,
    PhysicianRegistered,
    RegistryEvent,
)
from services.domain.aggregate import project_all
from services.domain.clock import FixedClock
from services.domain.errors import IllegalTransition, InvalidCommand
from services.domain.hashchain import verify_stream
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientInsurance,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    generic_code_of,
    today,
)
from tests.support.registries import BY, D0, DRUG, KEY, OTHER_REGION, PATIENT_REF, REGION, registry_samples

T0 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)
DAY = date(2025, 3, 10)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def _physical(clock: FixedClock, institution_id: str = "P-1", region: str = REGION) -> Institution:
    return Institution.register(clock=clock, changed_by=BY, institution_id=institution_id, name="People's Hospital",
                                kind=InstitutionKind.PHYSICAL, ownership=Ownership.PUBLIC,
                                level=InstitutionLevel.TERTIARY, region=region, agreement_no="AG-1")


def _internet(clock: FixedClock, physical: Institution) -> Institution:
    return Institution.register(clock=clock, changed_by=BY, institution_id="H-1", name="Internet Hospital",
                                kind=InstitutionKind.INTERNET, ownership=Ownership.PUBLIC,
                                level=InstitutionLevel.TERTIARY, region=physical.region, agreement_no="AG-2",
                                physical=physical)


def _reloaded(aggregate: Any) -> Any:
    """The aggregate rebuilt from its events, and from a snapshot of it: both equal the original."""
    events = aggregate.collect_events()
    rebuilt = project_all(type(aggregate), events)
    assert rebuilt.model_dump() == aggregate.model_dump()
    snapshot = aggregate.Snapshot.take(aggregate)
    assert type(aggregate).from_snapshot(snapshot).model_dump() == aggregate.model_dump()
    assert verify_stream(events) is None
    return rebuilt


# --- every change records who made it and from when ------------------------------------------------------------


def test_every_registry_event_records_who_changed_it_and_from_when(clock: FixedClock) -> None:
    events = registry_samples(clock)
    registry = [e for e in events if isinstance(e, RegistryEvent)]
    assert events and registry == events
    assert all(e.changed_by in (BY, "regulator:NHSA") for e in registry)
    assert all(isinstance(e.effective_from, date) for e in registry)
    for event in events:
        assert from_json(type(event).__name__, to_json(event)) == event


def test_effective_from_defaults_to_the_china_time_day(clock: FixedClock) -> None:
    clock.set(datetime(2025, 3, 10, 17, 0, tzinfo=UTC))  # 01:00 on the 11th in China
    physician = Physician.register(clock=clock, changed_by=BY, physician_id="DR-1", hospital_id="H-1", name="Li",
                                   qualification_no="Q")
    assert physician.pending_events[0].effective_from == date(2025, 3, 11) == today(clock)  # type: ignore[attr-defined]


# --- institutions -----------------------------------------------------------------------------------------------


def test_an_internet_hospital_is_backed_by_a_registered_physical_institution_of_its_region(clock: FixedClock) -> None:
    physical = _physical(clock)
    with pytest.raises(InvalidCommand, match="names its registered physical"):
        Institution.register(clock=clock, changed_by=BY, institution_id="H-1", name="x", kind=InstitutionKind.INTERNET,
                             ownership=Ownership.PUBLIC, level=InstitutionLevel.TERTIARY, region=REGION,
                             agreement_no="A")
    hospital = _internet(clock, physical)
    with pytest.raises(InvalidCommand, match="not an internet one"):
        _internet(clock, hospital)
    with pytest.raises(InvalidCommand, match="region"):
        Institution.register(clock=clock, changed_by=BY, institution_id="H-2", name="x", kind=InstitutionKind.INTERNET,
                             ownership=Ownership.PUBLIC, level=InstitutionLevel.TERTIARY, region=REGION,
                             agreement_no="A", physical=_physical(clock, "P-2", OTHER_REGION))
    assert hospital.physical_institution_id == "P-1" and hospital.is_internet
    assert _reloaded(hospital).physical_institution_id == "P-1"


def test_suspending_the_physical_institution_suspends_its_internet_hospital(clock: FixedClock) -> None:
    physical = _physical(clock)
    hospital = _internet(clock, physical)
    assert hospital.active_on(DAY, physical=physical)
    assert not hospital.active_on(DAY)  # its physical institution must be given
    physical.suspend_agreement(clock=clock, changed_by=BY, reason="audit", effective_from=DAY + timedelta(days=2))
    assert hospital.active_on(DAY + timedelta(days=1), physical=physical)
    assert not hospital.active_on(DAY + timedelta(days=2), physical=physical)
    assert not physical.agreement_active and hospital.agreement_active
    physical.reinstate_agreement(clock=clock, changed_by=BY, reason="cleared", effective_from=DAY + timedelta(days=9))
    assert hospital.active_on(DAY + timedelta(days=9), physical=physical)
    with pytest.raises(IllegalTransition):
        physical.reinstate_agreement(clock=clock, changed_by=BY, reason="again")
    rebuilt = _reloaded(physical)
    assert not rebuilt.active_on(DAY + timedelta(days=3)) and rebuilt.active_on(DAY + timedelta(days=10))


def test_institution_changes_ownership_and_level(clock: FixedClock) -> None:
    physical = _physical(clock)
    physical.change(clock=clock, changed_by=BY, ownership=Ownership.NON_PUBLIC, level=InstitutionLevel.SECONDARY)
    assert (physical.ownership, physical.level) == (Ownership.NON_PUBLIC, InstitutionLevel.SECONDARY)
    with pytest.raises(InvalidCommand):
        physical.change(clock=clock, changed_by=BY)
    _reloaded(physical)


# --- physicians, pharmacists ------------------------------------------------------------------------------------


def test_physician_key_and_status(clock: FixedClock) -> None:
    physician = Physician.register(clock=clock, changed_by=BY, physician_id="DR-1", hospital_id="H-1", name="Li",
                                   qualification_no="Q", physician_code="D220100001", public_key=KEY)
    physician.suspend(clock=clock, changed_by=BY, reason="review")
    with pytest.raises(IllegalTransition):
        physician.suspend(clock=clock, changed_by=BY, reason="again")
    physician.change_key(clock=clock, changed_by=BY, public_key="cd" * 32)
    with pytest.raises(InvalidCommand):
        physician.change_key(clock=clock, changed_by=BY, public_key="cd" * 32)
    rebuilt = _reloaded(physician)
    assert rebuilt.suspended and rebuilt.public_key == "cd" * 32 and rebuilt.physician_code == "D220100001"


def test_r18_a_third_party_pharmacist_reviews_only_for_hospitals_with_a_recorded_agreement(clock: FixedClock) -> None:
    third = Pharmacist.register(clock=clock, changed_by=BY, pharmacist_id="RPH-3", name="Sun", qualification_no="Q",
                                third_party=True, company_id="REVIEW-CO", region=REGION)
    assert not third.may_review_for("H-1")
    third.record_agreement(clock=clock, changed_by=BY, hospital_id="H-1", agreement_no="CA-1")
    assert third.may_review_for("H-1") and not third.may_review_for("H-2")
    third.suspend(clock=clock, changed_by=BY, reason="review")
    assert not third.may_review_for("H-1")
    third.reinstate(clock=clock, changed_by=BY, reason="ok")
    third.end_agreement(clock=clock, changed_by=BY, hospital_id="H-1", reason="ended")
    assert not third.may_review_for("H-1")
    with pytest.raises(IllegalTransition):
        third.end_agreement(clock=clock, changed_by=BY, hospital_id="H-1", reason="again")
    assert _reloaded(third).agreements == frozenset()


def test_an_employed_pharmacist_reviews_for_its_employer_and_has_no_agreements(clock: FixedClock) -> None:
    own = Pharmacist.register(clock=clock, changed_by=BY, pharmacist_id="RPH-1", name="Wang", qualification_no="Q",
                              employer_id="H-1")
    assert own.may_review_for("H-1") and not own.may_review_for("H-2")
    with pytest.raises(InvalidCommand, match="third-party"):
        own.record_agreement(clock=clock, changed_by=BY, hospital_id="H-2", agreement_no="CA")
    with pytest.raises(InvalidCommand, match="either"):
        Pharmacist.register(clock=clock, changed_by=BY, pharmacist_id="RPH-2", name="x", qualification_no="Q",
                            employer_id="H-1", third_party=True)


# --- pharmacies, delivery enterprises ---------------------------------------------------------------------------


def test_pharmacy_drug_list_chronic_qualification_and_payee(clock: FixedClock) -> None:
    pharmacy = Pharmacy.designate(clock=clock, changed_by=BY, pharmacy_id="PH-1", name="Kangda",
                                  pooling_region=REGION, agreement_no="A-1")
    assert pharmacy.drug_codes is None and pharmacy.region == REGION and not pharmacy.suspended
    pharmacy.list_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    with pytest.raises(InvalidCommand):
        pharmacy.list_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    other = "XA10BAB001A002030101"
    pharmacy.list_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG, other])
    pharmacy.delist_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    with pytest.raises(InvalidCommand):
        pharmacy.delist_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    pharmacy.set_chronic_qualification(clock=clock, changed_by=BY, qualified=True)
    pharmacy.change_payee(clock=clock, changed_by=BY, payee_id="SUPPLY-1")
    pharmacy.suspend_agreement(clock=clock, changed_by=BY, reason="audit")
    rebuilt = _reloaded(pharmacy)
    assert rebuilt.drug_codes == frozenset({other}) and rebuilt.chronic_qualified and rebuilt.payee_id == "SUPPLY-1"
    assert rebuilt.suspended


def test_delivery_enterprise_gsp_qualification(clock: FixedClock) -> None:
    enterprise = DeliveryEnterprise.register(clock=clock, changed_by=BY, enterprise_id="DE-1", name="Express",
                                             region=REGION, gsp_qualified=True)
    enterprise.change_gsp(clock=clock, changed_by=BY, gsp_qualified=False, reason="lapsed")
    with pytest.raises(InvalidCommand):
        enterprise.change_gsp(clock=clock, changed_by=BY, gsp_qualified=False, reason="again")
    assert not _reloaded(enterprise).gsp_qualified


# --- patients ---------------------------------------------------------------------------------------------------


def test_r12_off_site_filing_holds_for_its_region_and_period(clock: FixedClock) -> None:
    insurance = PatientInsurance.register(clock=clock, changed_by=BY, patient_ref=PATIENT_REF, insured_region=REGION,
                                          insurance_type=InsuranceType.EMPLOYEE)
    assert not insurance.filed_for(OTHER_REGION, DAY)
    with pytest.raises(InvalidCommand, match="other than the insured region"):
        insurance.record_filing(clock=clock, changed_by=BY, filing_no="F-0", region=REGION, valid_from=D0)
    insurance.record_filing(clock=clock, changed_by=BY, filing_no="F-1", region=OTHER_REGION, valid_from=D0,
                            valid_until=date(2025, 6, 30))
    assert insurance.filed_for(OTHER_REGION, D0) and insurance.filed_for(OTHER_REGION, date(2025, 6, 30))
    assert not insurance.filed_for(OTHER_REGION, D0 - timedelta(days=1))
    assert not insurance.filed_for(OTHER_REGION, date(2025, 7, 1)) and not insurance.filed_for("532300", DAY)
    insurance.end_filing(clock=clock, changed_by=BY, filing_no="F-1", reason="moved back", effective_from=DAY)
    assert insurance.filed_for(OTHER_REGION, DAY - timedelta(days=1)) and not insurance.filed_for(OTHER_REGION, DAY)
    assert not _reloaded(insurance).filed_for(OTHER_REGION, DAY)


def test_chronic_entitlements_per_disease(clock: FixedClock) -> None:
    insurance = PatientInsurance.register(clock=clock, changed_by=BY, patient_ref=PATIENT_REF, insured_region=REGION,
                                          insurance_type=InsuranceType.RESIDENT)
    insurance.grant_chronic(clock=clock, changed_by=BY, disease_code="E11")
    assert insurance.entitled_to("E11.9") and not insurance.entitled_to("I10")
    with pytest.raises(IllegalTransition):
        insurance.grant_chronic(clock=clock, changed_by=BY, disease_code="E11")
    insurance.change(clock=clock, changed_by=BY, insured_region=OTHER_REGION, insurance_type=InsuranceType.EMPLOYEE)
    rebuilt = _reloaded(insurance)
    assert rebuilt.chronic_entitlements == frozenset({"E11"}) and rebuilt.insured_region == OTHER_REGION


def test_patient_status_records_who_suspended(clock: FixedClock) -> None:
    status = PatientStatus.suspend_for_fraud(None, clock=clock, changed_by=BY, patient_ref=PATIENT_REF, reason="x")
    status.reinstate(clock=clock, changed_by=BY, reason="appeal")
    status = PatientStatus.suspend_for_fraud(status, clock=clock, changed_by=BY, patient_ref=PATIENT_REF, reason="y")
    assert [e.changed_by for e in status.pending_events] == [BY] * 3  # type: ignore[attr-defined]
    assert _reloaded(status).suspended


# --- emergencies, chronic lists ---------------------------------------------------------------------------------


def test_r4_emergency_declared_by_the_authority_for_a_period(clock: FixedClock) -> None:
    declarations = EmergencyDeclarations.declare(None, clock=clock, changed_by=BY, region=REGION,
                                                 declaration_no="EM-1", title="epidemic", valid_from=DAY)
    assert declarations.declared_on(DAY) and not declarations.declared_on(DAY - timedelta(days=1))
    declarations.end(clock=clock, changed_by=BY, declaration_no="EM-1", reason="over",
                     effective_from=DAY + timedelta(days=30))
    assert declarations.declared_on(DAY + timedelta(days=29)) and not declarations.declared_on(DAY + timedelta(days=30))
    declarations = EmergencyDeclarations.declare(declarations, clock=clock, changed_by="regulator:NHSA",
                                                 region=REGION, declaration_no="EM-2", title="flood",
                                                 valid_from=DAY + timedelta(days=60),
                                                 valid_until=DAY + timedelta(days=70))
    assert declarations.declared_on(DAY + timedelta(days=70)) and not declarations.declared_on(DAY + timedelta(days=71))
    with pytest.raises(IllegalTransition):
        EmergencyDeclarations.declare(declarations, clock=clock, changed_by=BY, region=REGION, declaration_no="EM-2",
                                      title="again", valid_from=DAY)
    assert _reloaded(declarations).declared_on(DAY + timedelta(days=65))


def test_r4_chronic_disease_list_covers_its_categories_while_listed(clock: FixedClock) -> None:
    listing = ChronicDiseaseList.add(None, clock=clock, changed_by=BY, region=REGION, disease_code="E11",
                                     name="type 2 diabetes", effective_from=D0)
    listing = ChronicDiseaseList.add(listing, clock=clock, changed_by=BY, region=REGION, disease_code="I10",
                                     name="hypertension", effective_from=D0)
    assert listing.covers("E11.9", DAY) and listing.covers("I10", DAY) and not listing.covers("J06.9", DAY)
    assert not listing.covers("E11", D0 - timedelta(days=1))
    listing.remove(clock=clock, changed_by=BY, disease_code="E11", reason="revised", effective_from=DAY)
    assert listing.covers("E11.9", DAY - timedelta(days=1)) and not listing.covers("E11.9", DAY)
    with pytest.raises(IllegalTransition):
        listing.remove(clock=clock, changed_by=BY, disease_code="E11", reason="again")
    assert listing.listed() == frozenset({"I10"})
    assert _reloaded(listing).listed() == frozenset({"I10"})


# --- drug catalog -----------------------------------------------------------------------------------------------


def test_r7_caps_and_standards_as_of_the_day_with_the_institutions_own_cap_first(clock: FixedClock) -> None:
    drug = DrugListing.list_drug(clock=clock, changed_by="regulator:NHSA", drug_code=DRUG, name="metformin",
                                 category=CatalogCategory.A, chronic_list=True)
    assert drug.generic_code == generic_code_of(DRUG) == "XA10BA001"
    assert drug.price_cap_on(REGION, "P-1", DAY) is None and drug.payment_standard_on(REGION, DAY) is None
    drug.set_price_cap(clock=clock, changed_by=BY, region=REGION, cap=Decimal("11.25"), effective_from=D0)
    drug.set_price_cap(clock=clock, changed_by=BY, region=REGION, institution_id="P-1", cap=Decimal("9.68"),
                       effective_from=D0)
    drug.set_price_cap(clock=clock, changed_by=BY, region=REGION, cap=Decimal("10.50"), effective_from=DAY)
    drug.set_payment_standard(clock=clock, changed_by=BY, region=REGION, amount=Decimal("9.00"), effective_from=D0)
    assert drug.price_cap_on(REGION, "P-2", DAY - timedelta(days=1)) == Decimal("11.25")
    assert drug.price_cap_on(REGION, "P-2", DAY) == Decimal("10.50")
    assert drug.price_cap_on(REGION, "P-1", DAY) == Decimal("9.68")
    assert drug.price_cap_on(REGION, None, DAY) == Decimal("10.50")
    assert drug.price_cap_on(OTHER_REGION, "P-1", DAY) is None
    assert drug.price_cap_on(REGION, "P-2", D0 - timedelta(days=1)) is None
    drug.set_price_cap(clock=clock, changed_by=BY, region=REGION, institution_id="P-1", cap=None, effective_from=DAY)
    assert drug.price_cap_on(REGION, "P-1", DAY) == Decimal("10.50")  # its own cap withdrawn: the region's
    assert drug.payment_standard_on(REGION, DAY) == Decimal("9.00")
    drug.change(clock=clock, changed_by="regulator:NHSA", category=CatalogCategory.C)
    rebuilt = _reloaded(drug)
    assert rebuilt.out_of_catalog and rebuilt.chronic_list
    assert rebuilt.price_cap_on(REGION, "P-1", DAY - timedelta(days=1)) == Decimal("9.68")


def test_two_values_from_the_same_day_the_later_recording_wins(clock: FixedClock) -> None:
    drug = DrugListing.list_drug(clock=clock, changed_by=BY, drug_code=DRUG, name="m", category=CatalogCategory.A)
    drug.set_payment_standard(clock=clock, changed_by=BY, region=REGION, amount=Decimal("9.00"), effective_from=D0)
    drug.set_payment_standard(clock=clock, changed_by=BY, region=REGION, amount=Decimal("8.00"), effective_from=D0)
    assert drug.payment_standard_on(REGION, D0) == Decimal("8.00")


# --- upcasting events written before the registries recorded who changed them --------------------------------


def _written_as(event: Any, version: int, *drop: str, **change: Any) -> dict[str, Any]:
    data = json.loads(to_json(event))
    for name in drop:
        data.pop(name)
    data.update(schema_version=version, prev_hash=GENESIS_HASH, **change)
    payload = {"event_type": type(event).__name__, **{k: v for k, v in data.items() if k != "hash"}}
    data["hash"] = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    return data


def test_v1_physician_registration_loads_unattributed_with_its_hash(clock: FixedClock) -> None:
    event = Physician.register(clock=clock, changed_by=BY, physician_id="DR-1", hospital_id="H-1", name="Li",
                               qualification_no="Q", public_key=KEY).collect_events()[0]
    old = from_json("PhysicianRegistered", _written_as(event, 1, "changed_by", "effective_from", "physician_code",
                                                       "public_key"))
    assert isinstance(old, PhysicianRegistered) and old.schema_version == 2
    assert old.changed_by == UNRECORDED and old.effective_from == T0.date() and old.public_key is None
    assert verify_stream([old]) is None
    assert project_all(Physician, [old]).public_key is None


def test_v1_third_party_pharmacist_keeps_its_company_apart_from_employers(clock: FixedClock) -> None:
    event = Pharmacist.register(clock=clock, changed_by=BY, pharmacist_id="RPH-3", name="Sun", qualification_no="Q",
                                third_party=True, company_id="REVIEW-CO").collect_events()[0]
    v1 = _written_as(event, 1, "changed_by", "effective_from", "company_id", "region", employer_id="REVIEW-CO")
    old = from_json("PharmacistRegistered", v1)
    assert isinstance(old, PharmacistRegistered) and old.employer_id is None and old.company_id == "REVIEW-CO"
    assert verify_stream([old]) is None


@pytest.mark.parametrize("name", ["PhysicianSuspended", "PhysicianReinstated", "PharmacyAgreementSuspended",
                                  "PatientSuspendedForFraud", "PatientReinstated"])
def test_v1_status_events_load_unattributed(clock: FixedClock, name: str) -> None:
    [event] = [e for e in _status_events(clock) if type(e).__name__ == name]
    old = from_json(name, _written_as(event, 1, "changed_by", "effective_from"))
    assert isinstance(old, RegistryEvent) and old.changed_by == UNRECORDED and old.schema_version == 2
    assert verify_stream([old]) is None


def _status_events(clock: FixedClock) -> list[Any]:
    physician = Physician.register(clock=clock, changed_by=BY, physician_id="DR-1", hospital_id="H", name="Li",
                                   qualification_no="Q")
    physician.suspend(clock=clock, changed_by=BY, reason="r")
    physician.reinstate(clock=clock, changed_by=BY, reason="r")
    pharmacy = Pharmacy.designate(clock=clock, changed_by=BY, pharmacy_id="PH", name="n", pooling_region=REGION,
                                  agreement_no="A")
    pharmacy.suspend_agreement(clock=clock, changed_by=BY, reason="r")
    status = PatientStatus.suspend_for_fraud(None, clock=clock, changed_by=BY, patient_ref=PATIENT_REF, reason="r")
    status.reinstate(clock=clock, changed_by=BY, reason="r")
    return [*physician.collect_events(), *pharmacy.collect_events(), *status.collect_events()]
