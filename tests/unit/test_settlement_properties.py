"""Properties of the settlement split over random claims, policies and year-to-date figures."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.base import ZERO, CatalogCategory, InsuranceType, Ownership
from services.domain.errors import RuleViolation
from services.domain.settlement import Claim, ClaimLine, MappingCatalog, Split, YearToDate, split
from services.reference.policies import RegionPolicy

REGIONS = ("370100", "220100", "532300")
COVERED = (CatalogCategory.A, CatalogCategory.B)


def money(low: str = "0.00", high: str = "5000.00") -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=Decimal(low), max_value=Decimal(high), places=2, allow_nan=False, allow_infinity=False
    )


ratios = st.decimals(
    min_value=Decimal(0), max_value=Decimal(1), places=4, allow_nan=False, allow_infinity=False
)


@st.composite
def terms(draw: st.DrawFn, *, employee: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "deductible": str(draw(money("0.00", "1500.00"))),
        "annual_fund_cap": str(draw(money("0.00", "20000.00"))),
        "fund_ratio": str(draw(ratios)),
        "category_b_first_self_pay": str(draw(ratios)),
        "personal_account": None,
    }
    if employee:
        out["personal_account"] = {
            "excess_over_cap_non_public": draw(st.booleans()),
            "out_of_catalog": draw(st.booleans()),
        }
    return out


@st.composite
def policies(draw: st.DrawFn, region: str) -> RegionPolicy:
    return RegionPolicy.model_validate(
        {
            "region_code": region,
            "name": "random",
            "version": "2026.1",
            "effective_from": date(2026, 1, 1),
            "illustrative": True,
            "employee": draw(terms(employee=True)),
            "resident": draw(terms(employee=False)),
            "consultation_fee": {level: "10.00" for level in ("tertiary", "secondary", "primary", "unrated")},
            "disease_scope": {
                "all_diseases": draw(st.booleans()),
                "diseases": [{"code": "E11", "name": "2型糖尿病"}],
            },
        }
    )


@st.composite
def lines(draw: st.DrawFn, n: int) -> ClaimLine:
    price = draw(money("0.00", "3000.00"))
    cap = draw(st.none() | money("0.00", "3000.00"))
    return ClaimLine(
        drug_code=f"X{n:019d}",
        category=draw(st.sampled_from(CatalogCategory)),
        quantity=draw(st.integers(min_value=1, max_value=20)),
        unit_price=price,
        price_cap=cap,
        in_indication=draw(st.booleans()),
        patient_consent=draw(st.booleans()),
    )


@st.composite
def cases(
    draw: st.DrawFn, *, consent_always: bool = True
) -> tuple[Claim, RegionPolicy, MappingCatalog, YearToDate]:
    insured = draw(st.sampled_from(REGIONS))
    treated = draw(st.sampled_from(REGIONS))
    count = draw(st.integers(min_value=1, max_value=6))
    claim_lines = [draw(lines(n)) for n in range(count)]
    catalog = MappingCatalog(
        treated,
        {
            ln.drug_code: category
            for ln in claim_lines
            if (category := draw(st.sampled_from(CatalogCategory) | st.just(ln.category)))
            is not CatalogCategory.NONE
        },
    )
    if consent_always:
        claim_lines = [ln.model_copy(update={"patient_consent": True}) for ln in claim_lines]
    claim = Claim(
        lines=tuple(claim_lines),
        delivery_fee=draw(money("0.00", "50.00")),
        insurance_type=draw(st.sampled_from(InsuranceType)),
        insured_region=insured,
        treatment_region=treated,
        institution_ownership=draw(st.sampled_from(Ownership)),
        diagnosis_code=draw(st.sampled_from(["E11.900", "I10.x00", "J44.100"])),
        suspended_for_fraud=draw(st.booleans()),
        personal_account_balance=draw(money("0.00", "3000.00")),
    )
    policy = draw(policies(insured))
    cap = policy.terms(claim.insurance_type).annual_fund_cap
    deductible = policy.terms(claim.insurance_type).deductible
    ytd = YearToDate(
        deductible_met=draw(money("0.00", str(deductible))),
        fund_paid=draw(money("0.00", str(cap))),
    )
    return claim, policy, catalog, ytd


Case = tuple[Claim, RegionPolicy, MappingCatalog, YearToDate]


def covered(result_line_category: CatalogCategory, claim_line: ClaimLine) -> bool:
    return result_line_category in COVERED and claim_line.in_indication


@settings(max_examples=80, deadline=None)
@given(cases())
def test_split_adds_up_to_the_fen_and_never_goes_negative(case: Case) -> None:
    result = split(*case)
    assert result.fund + result.personal_account + result.self_pay == result.total
    assert result.total == result.drugs_total + result.delivery_fee
    for line in result.lines:
        assert line.fund + line.personal_account + line.self_pay == line.total
        assert min(line.fund, line.personal_account, line.self_pay) >= ZERO
        assert line.total == line.unit_price * line.quantity
    for amount in (result.fund, result.personal_account, result.self_pay, result.deductible_applied):
        assert amount == amount.quantize(Decimal("0.01"))


@settings(max_examples=80, deadline=None)
@given(cases())
def test_fund_and_account_never_pay_the_delivery_fee(case: Case) -> None:
    result = split(*case)
    assert result.fund + result.personal_account <= result.drugs_total
    assert result.self_pay >= result.delivery_fee


@settings(max_examples=80, deadline=None)
@given(cases())
def test_fund_never_pays_above_the_price_cap_nor_for_uncovered_lines(case: Case) -> None:
    claim, *_ = case
    result = split(*case)
    for claim_line, line in zip(claim.lines, result.lines, strict=True):
        settle_price = (
            claim_line.unit_price
            if claim_line.price_cap is None
            else min(claim_line.unit_price, claim_line.price_cap)
        )
        assert line.fund <= settle_price * claim_line.quantity
        if not covered(line.category, claim_line):
            assert line.fund == ZERO
        if claim.institution_ownership is Ownership.PUBLIC:
            assert line.fund + line.personal_account <= line.settled_amount


@settings(max_examples=100, deadline=None)
@given(cases())
def test_suspended_patient_gets_no_insurance_payment(case: Case) -> None:
    claim, policy, catalog, ytd = case
    suspended = claim.model_copy(update={"suspended_for_fraud": True})
    result = split(suspended, policy, catalog, ytd)
    assert (result.fund, result.personal_account) == (ZERO, ZERO)
    assert result.self_pay == result.total
    assert "R11" in result.rules_applied


@settings(max_examples=80, deadline=None)
@given(cases(), money("0.00", "30000.00"))
def test_annual_cap_is_never_exceeded(case: Case, fund_paid: Decimal) -> None:
    claim, policy, catalog, ytd = case
    cap = policy.terms(claim.insurance_type).annual_fund_cap
    ytd = ytd.model_copy(update={"fund_paid": fund_paid})
    result = split(claim, policy, catalog, ytd)
    if fund_paid <= cap:
        assert ytd.fund_paid + result.fund <= cap
    else:
        assert result.fund == ZERO


@settings(max_examples=80, deadline=None)
@given(cases())
def test_deductible_is_never_over_applied(case: Case) -> None:
    claim, policy, catalog, ytd = case
    result = split(claim, policy, catalog, ytd)
    assert ytd.after(result).deductible_met <= policy.terms(claim.insurance_type).deductible


@settings(max_examples=80, deadline=None)
@given(cases())
def test_personal_account_within_balance_and_only_for_employees(case: Case) -> None:
    claim, *_ = case
    result = split(*case)
    assert result.personal_account <= claim.personal_account_balance
    if claim.insurance_type is InsuranceType.RESIDENT:
        assert result.personal_account == ZERO


@settings(max_examples=100, deadline=None)
@given(cases(consent_always=False))
def test_uncovered_lines_without_consent_are_refused_r10(case: Case) -> None:
    claim, _, catalog, _ = case
    missing_consent = any(
        not covered(catalog.category(ln.drug_code), ln) and not ln.patient_consent for ln in claim.lines
    )
    if missing_consent:
        with pytest.raises(RuleViolation) as refused:
            split(*case)
        assert refused.value.rule_id == "R10"
    else:
        assert isinstance(split(*case), Split)


@settings(max_examples=80, deadline=None)
@given(cases())
def test_split_is_deterministic_and_uses_the_insured_policy(case: Case) -> None:
    claim, policy, catalog, _ = case
    first, second = split(*case), split(*case)
    assert first == second
    assert (first.policy_region, first.catalog_region) == (claim.insured_region, catalog.region_code)
    assert ("R12" in first.rules_applied) is (claim.insured_region != claim.treatment_region)
    assert policy.version == first.policy_version
