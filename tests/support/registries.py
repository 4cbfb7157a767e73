"""Registry builders for domain tests (no I/O): one event of every registry type, keys of test physicians."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from events.base import CatalogCategory, DomainEvent, InsuranceType, Ownership
from events.registries import InstitutionKind, InstitutionLevel
from services.domain.clock import Clock
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientInsurance,
    Pharmacist,
    Pharmacy,
    Physician,
)

BY = "agency:220100"
REGION = "220100"
OTHER_REGION = "370100"
PATIENT_REF = "p" * 64
DRUG = "XA10BAA001A001030101"
KEY = "ab" * 32
D0 = date(2025, 1, 1)


def registry_samples(clock: Clock) -> list[DomainEvent]:
    """Every registry event type that the older samples (physician, pharmacy, patient status) do not produce."""
    physical = Institution.register(clock=clock, changed_by=BY, institution_id="P-1", name="People's Hospital",
                                    kind=InstitutionKind.PHYSICAL, ownership=Ownership.PUBLIC,
                                    level=InstitutionLevel.TERTIARY, region=REGION, agreement_no="AG-1")
    physical.change(clock=clock, changed_by=BY, level=InstitutionLevel.SECONDARY)
    physical.suspend_agreement(clock=clock, changed_by=BY, reason="audit")
    physical.reinstate_agreement(clock=clock, changed_by=BY, reason="cleared")

    physician = Physician.register(clock=clock, changed_by=BY, physician_id="DR-9", hospital_id="H-1", name="Li",
                                   qualification_no="Q", physician_code="D1", public_key=KEY)
    physician.change_key(clock=clock, changed_by=BY, public_key="cd" * 32)

    third = Pharmacist.register(clock=clock, changed_by=BY, pharmacist_id="RPH-9", name="Chen", qualification_no="Q",
                                third_party=True, company_id="REVIEW-CO", region=REGION)
    third.record_agreement(clock=clock, changed_by=BY, hospital_id="H-1", agreement_no="CA-1")
    third.end_agreement(clock=clock, changed_by=BY, hospital_id="H-1", reason="expired")
    third.suspend(clock=clock, changed_by=BY, reason="review")
    third.reinstate(clock=clock, changed_by=BY, reason="cleared")

    pharmacy = Pharmacy.designate(clock=clock, changed_by=BY, pharmacy_id="PH-9", name="Kangda",
                                  pooling_region=REGION, agreement_no="A-9")
    pharmacy.list_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    pharmacy.delist_drugs(clock=clock, changed_by=BY, drug_codes=[DRUG])
    pharmacy.set_chronic_qualification(clock=clock, changed_by=BY, qualified=True)
    pharmacy.change_payee(clock=clock, changed_by=BY, payee_id="SUPPLY-1")
    pharmacy.suspend_agreement(clock=clock, changed_by=BY, reason="audit")
    pharmacy.reinstate_agreement(clock=clock, changed_by=BY, reason="cleared")

    enterprise = DeliveryEnterprise.register(clock=clock, changed_by=BY, enterprise_id="DE-1", name="Express",
                                             region=REGION, gsp_qualified=True, gsp_certificate_no="GSP-1")
    enterprise.change_gsp(clock=clock, changed_by=BY, gsp_qualified=False, reason="certificate lapsed")

    insurance = PatientInsurance.register(clock=clock, changed_by=BY, patient_ref=PATIENT_REF, insured_region=REGION,
                                          insurance_type=InsuranceType.EMPLOYEE)
    insurance.change(clock=clock, changed_by=BY, insured_region=REGION, insurance_type=InsuranceType.RESIDENT)
    insurance.grant_chronic(clock=clock, changed_by=BY, disease_code="E11")
    insurance.revoke_chronic(clock=clock, changed_by=BY, disease_code="E11", reason="cured")
    insurance.record_filing(clock=clock, changed_by=BY, filing_no="F-1", region=OTHER_REGION, valid_from=D0)
    insurance.end_filing(clock=clock, changed_by=BY, filing_no="F-1", reason="moved back")

    emergencies = EmergencyDeclarations.declare(None, clock=clock, changed_by=BY, region=REGION,
                                                declaration_no="EM-1", title="epidemic", valid_from=D0)
    emergencies.end(clock=clock, changed_by=BY, declaration_no="EM-1", reason="over")

    drug = DrugListing.list_drug(clock=clock, changed_by="regulator:NHSA", drug_code=DRUG, name="metformin",
                                 category=CatalogCategory.A, chronic_list=True)
    drug.change(clock=clock, changed_by="regulator:NHSA", category=CatalogCategory.B)
    drug.set_payment_standard(clock=clock, changed_by=BY, region=REGION, amount=Decimal("10.00"))
    drug.set_price_cap(clock=clock, changed_by=BY, region=REGION, cap=Decimal("11.25"))

    chronic = ChronicDiseaseList.add(None, clock=clock, changed_by=BY, region=REGION, disease_code="E11",
                                     name="type 2 diabetes")
    chronic.remove(clock=clock, changed_by=BY, disease_code="E11", reason="policy change")

    aggregates = (physical, physician, third, pharmacy, enterprise, insurance, emergencies, drug, chronic)
    return [e for a in aggregates for e in a.collect_events()]
