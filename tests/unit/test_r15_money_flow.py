"""Issue 14 worked examples at the unit level: the one rounding rule, provider terms per region (DOMAIN.md,
Settlement)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

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
