"""Issue 14 worked examples at the unit level: the one rounding rule, provider terms per region (DOMAIN.md,
Settlement)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import uuid4

from events.base import CatalogCategory, InsuranceType, Ownership
from services.domain.settlement import Claim, ClaimLine, MappingCatalog, YearToDate, split
from services.reference.policies import PayeeKind, load_policy, provider_terms

D = Decimal
CODE = "XA10BAA001A001030101"


def test_ten_lines_of_three_fen_at_85_percent_pay_26_fen_from_the_fund() -> None:
    """The fund's share is rounded once on the claim: 10 × 0.03 × 85% = 0.255 → 0.26 (not 10 × 0.03 = 0.30)."""
    policy = load_policy("370100", as_of=date(2026, 3, 1))
    lines = tuple(ClaimLine(drug_code=f"XA10BAA001A0010301{i:02d}", category=CatalogCategory.A, quantity=1,
                            unit_price=D("0.03")) for i in range(10))
    catalog = MappingCatalog("370100", {line.drug_code: CatalogCategory.A for line in lines})
    claim = Claim(lines=lines, insurance_type=InsuranceType.EMPLOYEE, insured_region="370100",
                  treatment_region="370100", institution_ownership=Ownership.PUBLIC, diagnosis_code="E11.9")
    outcome = split(claim, policy, catalog, YearToDate(deductible_met=D("500.00")))
    assert outcome.fund == D("0.26")
    assert sum(line.fund for line in outcome.lines) == D("0.26")
    assert all(line.fund + line.personal_account + line.self_pay == line.total for line in outcome.lines)
    assert outcome.personal_account + outcome.self_pay == D("0.04")


def test_provider_terms_are_per_region_policy_data() -> None:
    jinan, changchun = provider_terms("370100", date(2026, 3, 1)), provider_terms("220100", date(2026, 3, 1))
    assert (jinan.hospital_deposit_rate, jinan.pharmacy_payee) == (D("0.05"), PayeeKind.DELIVERY_ENTERPRISE)
    assert (changchun.hospital_deposit_rate, changchun.pharmacy_payee) == (D("0.00"), PayeeKind.PHARMACY)


def _offsite_claim(filing: bool | None) -> Claim:
    return Claim(lines=(ClaimLine(drug_code=CODE, category=CatalogCategory.A, quantity=2, unit_price=D("50.00")),),
                 insurance_type=InsuranceType.EMPLOYEE, insured_region="220100", treatment_region="370100",
                 institution_ownership=Ownership.PUBLIC, diagnosis_code="E11.9", personal_account_balance=D("500.00"),
                 offsite_filing_valid=filing)


def test_r12_off_site_settles_by_the_insured_regions_policy_only_with_a_valid_filing() -> None:
    """R12 (003 art. 19): with a 长期异地就医备案 valid on the day the insured region's policy pays; without it no fund
    (nor account) payment: the patient pays all."""
    policy = load_policy("220100", as_of=date(2026, 3, 1))
    catalog = MappingCatalog("370100", {CODE: CatalogCategory.A})
    ytd = YearToDate(deductible_met=D("10000.00"))
    filed = split(_offsite_claim(True), policy, catalog, ytd)
    assert filed.fund > 0 and filed.fund + filed.personal_account + filed.self_pay == D("100.00")
    unfiled = split(_offsite_claim(False), policy, catalog, ytd)
    assert (unfiled.fund, unfiled.personal_account, unfiled.self_pay) == (D("0.00"), D("0.00"), D("100.00"))
    assert "R12" in unfiled.rules_applied


def test_a_consultation_is_priced_at_the_treatment_regions_outpatient_price() -> None:
    """R15: an off-site visit in Jinan is priced at Jinan's tertiary price (12.00), not the insured region's."""
    from events.base import RealNameMethod
    from events.encounter import FollowUpVisitRecorded
    from services.application.claims import consultation_claim
    from services.reference.policies import InstitutionLevel

    visit = FollowUpVisitRecorded.model_construct(
        consultation_fee=D("15.00"), insurance_type=InsuranceType.EMPLOYEE, insured_region="220100",
        pooling_region="370100", institution_ownership=Ownership.NON_PUBLIC, diagnosis_code="E11.9",
        verification_method=RealNameMethod.E_VOUCHER)
    treatment = load_policy("370100", as_of=date(2026, 3, 1))
    claim = consultation_claim(visit, treatment, InstitutionLevel.TERTIARY, suspended=False, balance=D("0.00"))
    assert claim.lines[0].price_cap == D("12.00") == treatment.consultation_fee[InstitutionLevel.TERTIARY]
    assert load_policy("220100", as_of=date(2026, 3, 1)).consultation_fee[InstitutionLevel.TERTIARY] != D("12.00")


def test_refusals_clawbacks_and_reversals_never_exceed_what_insurance_paid() -> None:
    import pytest

    from events.base import BusinessType
    from events.statement import PartyKind, SubjectKind
    from services.domain.clock import FixedClock
    from services.domain.errors import InvalidCommand
    from services.domain.settlement_case import SettlementCase

    clock = FixedClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    case = SettlementCase.open(clock=clock, business_type=BusinessType.INTERNET, subject_kind=SubjectKind.CONSULTATION,
                               subject_id=uuid4(), pooling_region="370100", hospital_id="H", physical_institution_id="P")
    case.refuse_consultation(clock=clock, paid=D("12.00"), amount="5.00", reason="x", audit_ref="A", acted_by="agency:370100")
    case.claw_back_consultation(clock=clock, paid=D("12.00"), amount="4.00", reason="x", audit_ref="B",
                                acted_by="agency:370100")
    with pytest.raises(InvalidCommand):  # 500.00 refused of 312.00 paid was accepted before issue 14
        case.refuse_consultation(clock=clock, paid=D("12.00"), amount="3.01", reason="x", audit_ref="C",
                                 acted_by="agency:370100")
    case.reverse(clock=clock, party_id="P", party_kind=PartyKind.PHYSICAL_INSTITUTION, paid_fund=D("6.00"),
                 paid_personal_account=D("6.00"), taken_elsewhere=D("0.00"), fund="3.00", personal_account="0.00",
                 self_pay_refund="0.00", reason="error", reversed_by="agency:370100", reversal_ref="RV")
    with pytest.raises(InvalidCommand):
        case.reverse(clock=clock, party_id="P", party_kind=PartyKind.PHYSICAL_INSTITUTION, paid_fund=D("6.00"),
                     paid_personal_account=D("6.00"), taken_elsewhere=D("0.00"), fund="0.01",
                     personal_account="0.00", self_pay_refund="0.00", reason="error", reversed_by="agency:370100",
                     reversal_ref="RV2")
    events = case.collect_events()
    assert [e.acted_by for e in events if hasattr(e, "acted_by")] == ["agency:370100", "agency:370100"]
    assert (case.refused, case.clawed_back, case.reversed) == (D("5.00"), D("4.00"), D("3.00"))
