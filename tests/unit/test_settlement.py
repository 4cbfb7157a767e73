"""Worked examples of the settlement split, one per rule, with the arithmetic done by hand.

The policies are written out here (not loaded from the ILLUSTRATIVE files) so each figure below can be
checked against the docstring. "Jinan-like" terms:

    employee: deductible 500.00, annual fund cap 10000.00, fund ratio 0.85, 乙 first self-pay 0.10
    resident: deductible 300.00, annual fund cap  5000.00, fund ratio 0.65, 乙 first self-pay 0.10

and "Changchun-like" for the insured region of an off-site patient (R12):

    employee: deductible 600.00, annual fund cap  8000.00, fund ratio 0.80, 乙 first self-pay 0.10
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from events.base import CatalogCategory, InsuranceType, Ownership
from services.domain.errors import RuleViolation
from services.domain.settlement import (
    Claim,
    ClaimLine,
    LineReason,
    MappingCatalog,
    RegionCatalog,
    Split,
    YearToDate,
    consultation_fee,
    split,
    to_fen,
)
from services.reference import load_reference
from services.reference.policies import InstitutionLevel, RegionPolicy, load_policy

A, B, C, NONE = CatalogCategory.A, CatalogCategory.B, CatalogCategory.C, CatalogCategory.NONE
EMPLOYEE, RESIDENT = InsuranceType.EMPLOYEE, InsuranceType.RESIDENT
PUBLIC, NON_PUBLIC = Ownership.PUBLIC, Ownership.NON_PUBLIC
JINAN, CHANGCHUN = "370100", "220100"
DEDUCTIBLE_MET_EMPLOYEE = YearToDate(deductible_met=Decimal("500.00"))
DEDUCTIBLE_MET_RESIDENT = YearToDate(deductible_met=Decimal("300.00"))


def D(text: str) -> Decimal:
    return Decimal(text)


def drug(n: int) -> str:
    return f"X{n:019d}"


def policy(
    region: str = JINAN,
    *,
    employee: tuple[str, str, str, str] = ("500.00", "10000.00", "0.85", "0.10"),
    resident: tuple[str, str, str, str] = ("300.00", "5000.00", "0.65", "0.10"),
    diseases: tuple[str, ...] = ("I10", "E11", "F20"),
    account: dict[str, bool] | None = None,
) -> RegionPolicy:
    def terms(figures: tuple[str, str, str, str]) -> dict[str, str]:
        keys = ("deductible", "annual_fund_cap", "fund_ratio", "category_b_first_self_pay")
        return dict(zip(keys, figures, strict=True))

    return RegionPolicy.model_validate(
        {
            "region_code": region,
            "name": f"test region {region}",
            "version": "2026.1",
            "effective_from": date(2026, 1, 1),
            "illustrative": True,
            "employee": {**terms(employee), "personal_account": account or {}},
            "resident": terms(resident),
            "consultation_fee": {
                "tertiary": "12.00",
                "secondary": "10.00",
                "primary": "8.00",
                "unrated": "6.00",
            },
            "disease_scope": {"diseases": [{"code": code, "name": code} for code in diseases]},
        }
    )


def claim(*lines: ClaimLine, **fields: Any) -> Claim:
    defaults: dict[str, Any] = {
        "insurance_type": EMPLOYEE,
        "insured_region": JINAN,
        "treatment_region": JINAN,
        "institution_ownership": PUBLIC,
        "diagnosis_code": "E11.900",
    }
    return Claim(lines=lines, **{**defaults, **fields})


def line(
    n: int, category: CatalogCategory, quantity: int, price: str, cap: str | None = None, **kw: Any
) -> ClaimLine:
    return ClaimLine(
        drug_code=drug(n),
        category=category,
        quantity=quantity,
        unit_price=D(price),
        price_cap=None if cap is None else D(cap),
        **kw,
    )


def catalog_of(the_claim: Claim) -> MappingCatalog:
    """The treatment catalog agreeing with the prescription (out-of-catalog drugs absent)."""
    categories = {ln.drug_code: ln.category for ln in the_claim.lines if ln.category is not NONE}
    return MappingCatalog(the_claim.treatment_region, categories)


def settle(the_claim: Claim, ytd: YearToDate, the_policy: RegionPolicy | None = None) -> Split:
    return split(the_claim, the_policy or policy(), catalog_of(the_claim), ytd)


def figures(result: Split) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    return result.total, result.fund, result.personal_account, result.self_pay


# --- R6 ------------------------------------------------------------------------------------------------


def test_r6_delivery_fee_is_self_pay_for_a_resident() -> None:
    """R6 (002 §三(四); 000 §四(三); 003 art. 16 配送费用医保不予支付): a resident, deductible met.

    甲 drug 2 x 50.00 = 100.00; fund 100.00 x 0.65 = 65.00; the patient's 35.00 plus the 10.00 delivery
    fee = 45.00 self-pay. Total 110.00 = 65.00 + 0 + 45.00.
    """
    result = settle(
        claim(line(1, A, 2, "50.00"), insurance_type=RESIDENT, delivery_fee=D("10.00")),
        DEDUCTIBLE_MET_RESIDENT,
    )
    assert figures(result) == (D("110.00"), D("65.00"), D("0.00"), D("45.00"))
    assert result.delivery_fee == D("10.00")
    assert result.rules_applied == ("R6",)


def test_r6_personal_account_never_pays_the_delivery_fee() -> None:
    """R6 (001 art. 13 提供药品配送服务的费用不纳入医保支付范围): an employee with 1000.00 in the account.

    甲 drug 100.00: fund 85.00, the patient's 15.00 from the account; the 10.00 delivery fee stays
    self-pay although the balance could cover it. Total 110.00 = 85.00 + 15.00 + 10.00.
    """
    result = settle(
        claim(line(1, A, 1, "100.00"), delivery_fee=D("10.00"), personal_account_balance=D("1000.00")),
        DEDUCTIBLE_MET_EMPLOYEE,
    )
    assert figures(result) == (D("110.00"), D("85.00"), D("15.00"), D("10.00"))


# --- R7 ------------------------------------------------------------------------------------------------


def test_r7_public_institution_excess_over_cap_is_self_pay() -> None:
    """R7 (003 art. 16 不得高于所依托的实体医疗机构药品价格): an employee at a public hospital, 1000.00 balance.

    乙 drug 3 x 120.00 = 360.00, cap 100.00: settled 3 x 100.00 = 300.00, excess 60.00.
    First self-pay 10% x 300.00 = 30.00; policy range 270.00; fund 270.00 x 0.85 = 229.50.
    The patient's share 360.00 - 229.50 = 130.50; the account may pay all but the excess: 70.50.
    Self-pay = the excess 60.00. Total 360.00 = 229.50 + 70.50 + 60.00.
    """
    result = settle(
        claim(line(1, B, 3, "120.00", "100.00"), personal_account_balance=D("1000.00")),
        DEDUCTIBLE_MET_EMPLOYEE,
    )
    assert figures(result) == (D("360.00"), D("229.50"), D("70.50"), D("60.00"))
    (only,) = result.lines
    assert (only.settled_amount, only.excess_over_cap) == (D("300.00"), D("60.00"))
    assert LineReason.ABOVE_PRICE_CAP in only.reasons
    assert result.rules_applied == ("R7",)


def test_r7_non_public_institution_excess_may_come_from_the_personal_account() -> None:
    """R7 (001 art. 11 非公立医疗机构…超过最高限价的部分，可由个人账户支付): a 乙 drug above its cap at a
    non-public hospital for an employee.

    Same drug: 3 x 120.00 = 360.00, cap 100.00 → settled 300.00, excess 60.00; first self-pay 30.00;
    fund (300.00 - 30.00) x 0.85 = 229.50 (never on the excess). Patient's share 130.50, all of it
    account-payable at a non-public institution:
      balance 1000.00 → account 130.50, self-pay 0.00;
      balance  100.00 → account 100.00, self-pay 30.50.
    """
    rich = settle(
        claim(
            line(1, B, 3, "120.00", "100.00"),
            institution_ownership=NON_PUBLIC,
            personal_account_balance=D("1000.00"),
        ),
        DEDUCTIBLE_MET_EMPLOYEE,
    )
    assert figures(rich) == (D("360.00"), D("229.50"), D("130.50"), D("0.00"))
    poor = settle(
        claim(
            line(1, B, 3, "120.00", "100.00"),
            institution_ownership=NON_PUBLIC,
            personal_account_balance=D("100.00"),
        ),
        DEDUCTIBLE_MET_EMPLOYEE,
    )
    assert figures(poor) == (D("360.00"), D("229.50"), D("100.00"), D("30.50"))
    assert poor.rules_applied == ("R7",)


def test_r7_price_below_cap_settles_at_actual() -> None:
    """001 art. 11 实际收费低于最高限价的，以实际价格支付: 甲 1 x 80.00 with cap 100.00 → fund 80.00 x 0.85 = 68.00."""
    result = settle(claim(line(1, A, 1, "80.00", "100.00")), DEDUCTIBLE_MET_EMPLOYEE)
    assert figures(result) == (D("80.00"), D("68.00"), D("0.00"), D("12.00"))
    assert result.rules_applied == ()


# --- R10 -----------------------------------------------------------------------------------------------


def test_r10_out_of_catalog_with_consent_is_self_pay() -> None:
    """R10 (003 art. 15 目录外的药品，在参保患者知情且自愿的前提下…自费购买): an employee, 1000.00 balance.

    甲 drug 100.00 → fund 85.00, account 15.00. Out-of-catalog drug 2 x 45.00 = 90.00 with consent →
    self-pay 90.00; the account does not pay it (policy default ``out_of_catalog: false``).
    Total 190.00 = 85.00 + 15.00 + 90.00.
    """
    result = settle(
        claim(
            line(1, A, 1, "100.00"),
            line(2, NONE, 2, "45.00", patient_consent=True),
            personal_account_balance=D("1000.00"),
        ),
        DEDUCTIBLE_MET_EMPLOYEE,
    )
    assert figures(result) == (D("190.00"), D("85.00"), D("15.00"), D("90.00"))
    assert result.lines[1].reasons == (LineReason.NOT_COVERED,)
    assert result.rules_applied == ("R10",)


def test_r10_personal_account_pays_out_of_catalog_only_where_the_policy_allows() -> None:
    """R10 with a region that lets the account pay out-of-catalog drugs: the 90.00 comes from the account."""
    lenient = policy(account={"out_of_catalog": True})
    result = settle(
        claim(line(2, NONE, 2, "45.00", patient_consent=True), personal_account_balance=D("1000.00")),
        DEDUCTIBLE_MET_EMPLOYEE,
        lenient,
    )
    assert figures(result) == (D("90.00"), D("0.00"), D("90.00"), D("0.00"))


@pytest.mark.parametrize(
    ("category", "in_indication"),
    [(NONE, True), (C, True), (B, False)],
    ids=["out-of-catalog", "category-C", "off-indication"],
)
def test_r10_without_consent_is_refused(category: CatalogCategory, in_indication: bool) -> None:
    """R10 (003 art. 15 超出药品适应症…甲方不予支付; 知情且自愿): no recorded consent → refused, naming the drug."""
    with pytest.raises(RuleViolation) as refused:
        settle(
            claim(line(1, A, 1, "10.00"), line(7, category, 1, "30.00", in_indication=in_indication)),
            DEDUCTIBLE_MET_EMPLOYEE,
        )
    assert refused.value.rule_id == "R10"
    assert refused.value.ids["drug_code"] == drug(7)


def test_r10_off_indication_with_consent_is_self_pay() -> None:
    """R10 (003 art. 15): a 乙 drug used outside its indication, consent recorded → 40.00 self-pay, no fund."""
    result = settle(
        claim(line(1, B, 2, "20.00", in_indication=False, patient_consent=True)), DEDUCTIBLE_MET_EMPLOYEE
    )
    assert figures(result) == (D("40.00"), D("0.00"), D("0.00"), D("40.00"))
    assert result.lines[0].reasons == (LineReason.OFF_INDICATION,)


# --- R11 -----------------------------------------------------------------------------------------------


def test_r11_suspended_patient_gets_no_insurance_payment() -> None:
    """R11 (002 §五(十三) 暂停其使用"互联网+"医疗服务医保支付…的资格): an employee suspended for fraud,
    500.00 in the account. 甲 drug 100.00 + delivery 5.00: fund 0, account 0, self-pay 105.00; the
    deductible is not consumed (nothing was policy-range spending the fund recognised).
    """
    result = settle(
        claim(
            line(1, A, 1, "100.00"),
            suspended_for_fraud=True,
            delivery_fee=D("5.00"),
            personal_account_balance=D("500.00"),
        ),
        YearToDate(),
    )
    assert figures(result) == (D("105.00"), D("0.00"), D("0.00"), D("105.00"))
    assert result.deductible_applied == D("0.00")
    assert result.rules_applied == ("R6", "R11")


# --- R12 -----------------------------------------------------------------------------------------------


def test_r12_off_site_patient_uses_insured_policy_and_treatment_catalog() -> None:
    """R12 (003 art. 19 按照参保地的病种范围和报销政策进行结算，医保目录执行就医地的规定): an employee insured
    in Changchun (220100) treated at a Jinan (370100) internet hospital, Changchun deductible met.

    The prescription recorded the drug as 乙, but Jinan's catalog lists it as 甲, so no first self-pay.
    Changchun's ratio applies: fund 200.00 x 0.80 = 160.00 (Jinan's 0.85 would give 170.00).
    Self-pay 40.00 (no balance). Total 200.00 = 160.00 + 0 + 40.00.
    """
    changchun = policy(CHANGCHUN, employee=("600.00", "8000.00", "0.80", "0.10"))
    off_site = claim(line(1, B, 1, "200.00"), insured_region=CHANGCHUN, treatment_region=JINAN)
    jinan_catalog = MappingCatalog(JINAN, {drug(1): A})
    result = split(off_site, changchun, jinan_catalog, YearToDate(deductible_met=D("600.00")))
    assert figures(result) == (D("200.00"), D("160.00"), D("0.00"), D("40.00"))
    assert (result.policy_region, result.catalog_region) == (CHANGCHUN, JINAN)
    assert result.lines[0].category is A
    assert LineReason.CATEGORY_FROM_CATALOG in result.lines[0].reasons
    assert result.rules_applied == ("R12",)


def test_r12_off_site_disease_scope_is_the_insured_regions() -> None:
    """R12 (003 art. 19 病种范围): F20 is payable online in Jinan but not in Changchun's (test) scope, so a
    Changchun employee treated in Jinan gets no fund payment for it: 甲 100.00 all the patient's, and
    the account (balance 30.00) pays 30.00 of it (000 §四(二) 不符合医保支付病种范围的，医保基金不予支付).
    """
    changchun = policy(CHANGCHUN, employee=("600.00", "8000.00", "0.80", "0.10"), diseases=("I10", "E11"))
    off_site = claim(
        line(1, A, 1, "100.00"),
        insured_region=CHANGCHUN,
        treatment_region=JINAN,
        diagnosis_code="F20.000",
        personal_account_balance=D("30.00"),
    )
    result = split(
        off_site, changchun, MappingCatalog(JINAN, {drug(1): A}), YearToDate(deductible_met=D("600.00"))
    )
    assert figures(result) == (D("100.00"), D("0.00"), D("30.00"), D("70.00"))
    assert LineReason.OUT_OF_DISEASE_SCOPE in result.lines[0].reasons


def test_r12_refuses_the_wrong_policy_or_catalog() -> None:
    """R12: the treatment region's policy, or the insured region's catalog, is refused."""
    off_site = claim(line(1, A, 1, "100.00"), insured_region=CHANGCHUN, treatment_region=JINAN)
    with pytest.raises(RuleViolation) as wrong_policy:
        split(off_site, policy(JINAN), MappingCatalog(JINAN, {drug(1): A}), YearToDate())
    assert wrong_policy.value.rule_id == "R12"
    with pytest.raises(RuleViolation) as wrong_catalog:
        split(off_site, policy(CHANGCHUN), MappingCatalog(CHANGCHUN, {drug(1): A}), YearToDate())
    assert wrong_catalog.value.rule_id == "R12"


# --- deductible, annual cap, 乙 first self-pay ------------------------------------------------------


def test_deductible_is_met_from_year_to_date() -> None:
    """起付线 (000 §四(四) 与线下…支付比例、年度医疗费额度、基金年度最高支付限额等一致): a resident who has met
    200.00 of the 300.00 deductible this year.

    甲 drug 250.00: 100.00 completes the deductible; fund (250.00 - 100.00) x 0.65 = 97.50;
    self-pay 250.00 - 97.50 = 152.50. Year to date afterwards: deductible 300.00, fund 97.50.
    """
    ytd = YearToDate(deductible_met=D("200.00"))
    result = settle(claim(line(1, A, 1, "250.00"), insurance_type=RESIDENT), ytd)
    assert figures(result) == (D("250.00"), D("97.50"), D("0.00"), D("152.50"))
    assert result.deductible_applied == D("100.00")
    assert ytd.after(result) == YearToDate(deductible_met=D("300.00"), fund_paid=D("97.50"))


def test_deductible_spans_lines_in_claim_order() -> None:
    """起付线 across lines: a resident at the start of the year (300.00 left).

    Line 1 甲 200.00: all to the deductible (100.00 left), fund 0.
    Line 2 乙 2 x 150.00 = 300.00: first self-pay 30.00, policy range 270.00; 100.00 completes the
    deductible; fund 170.00 x 0.65 = 110.50. Self-pay 200.00 + 189.50 = 389.50. Total 500.00.
    """
    result = settle(
        claim(line(1, A, 1, "200.00"), line(2, B, 2, "150.00"), insurance_type=RESIDENT), YearToDate()
    )
    assert [ln.fund for ln in result.lines] == [D("0.00"), D("110.50")]
    assert figures(result) == (D("500.00"), D("110.50"), D("0.00"), D("389.50"))
    assert result.deductible_applied == D("300.00")


def test_annual_fund_cap_stops_the_fund() -> None:
    """最高支付限额 (000 §四(四)): an employee whose fund has paid 9950.00 of the 10000.00 cap this year.

    Line 1 甲 100.00: 85.00 due, only 50.00 left → fund 50.00. Line 2 甲 40.00: cap reached → fund 0.
    No balance: self-pay 50.00 + 40.00 = 90.00. Total 140.00 = 50.00 + 0 + 90.00.
    """
    ytd = YearToDate(deductible_met=D("500.00"), fund_paid=D("9950.00"))
    result = settle(claim(line(1, A, 1, "100.00"), line(2, A, 1, "40.00")), ytd)
    assert figures(result) == (D("140.00"), D("50.00"), D("0.00"), D("90.00"))
    assert all(LineReason.ANNUAL_CAP in ln.reasons for ln in result.lines)
    assert ytd.after(result).fund_paid == D("10000.00")


def test_category_b_first_self_pay() -> None:
    """乙类先行自付 (000 §四(四) 相同的医保目录、医保支付类别): a resident, deductible met.

    乙 drug 2 x 150.00 = 300.00: first self-pay 10% = 30.00; fund (300.00 - 30.00) x 0.65 = 175.50;
    self-pay 30.00 + 94.50 = 124.50. Total 300.00 = 175.50 + 0 + 124.50.
    """
    result = settle(claim(line(1, B, 2, "150.00"), insurance_type=RESIDENT), DEDUCTIBLE_MET_RESIDENT)
    assert figures(result) == (D("300.00"), D("175.50"), D("0.00"), D("124.50"))
    assert result.lines[0].reasons == (LineReason.FIRST_SELF_PAY, LineReason.COINSURANCE)


# --- rounding ------------------------------------------------------------------------------------------


def test_one_rounding_half_up_per_line() -> None:
    """One rounding rule, once per line, remainder to self-pay.

    甲 1.70 x 0.85 = 1.445 → 1.45 (half up; half-even would give 1.44); self-pay 0.25.
    乙 3 x 33.33 = 99.99 at resident terms: (99.99 x 0.90) x 0.65 = 89.991 x 0.65 = 58.49415 → 58.49;
    self-pay 41.50.
    """
    assert to_fen(D("1.445")) == D("1.45")
    employee = settle(claim(line(1, A, 1, "1.70")), DEDUCTIBLE_MET_EMPLOYEE)
    assert figures(employee) == (D("1.70"), D("1.45"), D("0.00"), D("0.25"))
    resident = settle(claim(line(1, B, 3, "33.33"), insurance_type=RESIDENT), DEDUCTIBLE_MET_RESIDENT)
    assert figures(resident) == (D("99.99"), D("58.49"), D("0.00"), D("41.50"))


def test_resident_has_no_personal_account() -> None:
    """Residents have no personal account (002 §三(四) 职工医保个人账户): a stated balance is ignored."""
    result = settle(
        claim(line(1, A, 1, "100.00"), insurance_type=RESIDENT, personal_account_balance=D("500.00")),
        DEDUCTIBLE_MET_RESIDENT,
    )
    assert figures(result) == (D("100.00"), D("65.00"), D("0.00"), D("35.00"))


# --- consultation fee ----------------------------------------------------------------------------------


def test_consultation_fee_is_the_ordinary_outpatient_price() -> None:
    """002 §三(五) 按照公立医院普通门诊诊察类项目价格收费和支付: the region's fee per institution level."""
    jinan = policy()
    assert consultation_fee(jinan, InstitutionLevel.TERTIARY) == D("12.00")
    assert consultation_fee(jinan, InstitutionLevel.PRIMARY) == D("8.00")


# --- with the shipped reference data -------------------------------------------------------------------


def test_shipped_reference_and_policy_settle_an_off_site_claim() -> None:
    """R12 with the shipped (ILLUSTRATIVE) data: a Chuxiong resident treated in Jinan, deductible met.

    The category comes from the reference catalog bound to Jinan, the terms from Chuxiong's policy
    (resident: ratio 0.55, 乙 first self-pay 0.05). For a 乙 drug at its cap price p x 2:
    fund = to_fen(2p x 0.95 x 0.55).
    """
    reference = load_reference()
    b_drug = next(
        d for d in reference.drugs if d.category is B and reference.price_cap(d.code, "*") is not None
    )
    cap = reference.price_cap(b_drug.code, "*")
    assert cap is not None
    chuxiong = load_policy("532300")
    off_site = claim(
        ClaimLine(drug_code=b_drug.code, category=B, quantity=2, unit_price=cap, price_cap=cap),
        insurance_type=RESIDENT,
        insured_region="532300",
        treatment_region=JINAN,
        diagnosis_code="I10",
    )
    result = split(
        off_site, chuxiong, RegionCatalog(JINAN, reference), YearToDate(deductible_met=D("200.00"))
    )
    assert result.fund == to_fen(cap * 2 * D("0.95") * D("0.55"))
    assert result.fund + result.self_pay == cap * 2
    assert (result.policy_region, result.policy_version, result.catalog_region) == ("532300", "2026.1", JINAN)
