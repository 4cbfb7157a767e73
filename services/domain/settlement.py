"""Settlement split: what the pooled fund (统筹基金), the personal account (个人账户) and the patient (自费) pay.

A pure function of the claim, the insured region's policy, the treatment region's catalog and the
patient's year-to-date figures. Money is ``Decimal`` yuan.

**The one rounding rule** (DOMAIN.md, Settlement): the fund's share is worked out exactly on the claim's
eligible (policy-range) amounts, line by line, and the claim's fund total is rounded **once**, half up to the
fen (分); whatever the fund does not pay is the patient's (personal account, then self-pay). Ten lines of 0.03
at an 85% ratio pay 0.26 from the fund (10 × 0.0255 = 0.255 → 0.26), not ten times round(0.0255) = 0.30.
Lines show how the rounded total falls on them (largest remainder, in claim order on ties), so the lines still
add up: ``fund + personal_account + self_pay == total`` holds exactly, line by line and in total. The annual
cap (最高支付限额) bounds the rounded total. Within a claim the deductible is consumed exactly; the
year-to-date counter it reports (``deductible_applied``) is rounded once per claim by the same rule (it is a
counter, not money paid), and ``fund_cap_applied`` is what the annual cap took off the fund.

Per line, in claim order:

1. R10 (003 art. 15): category C (丙), out-of-catalog and off-indication lines are self-pay and need the
   patient's recorded consent, else the split is refused.
2. R7 (001 art. 11; 003 art. 16): the line settles on ``min(actual, cap)``; the excess is self-pay, or
   personal-account-payable at a non-public institution, never fund-paid.
3. Category B (乙) lines first leave ``category_b_first_self_pay`` of the settled amount to the patient
   (先行自付); the rest, and the whole of a category A (甲) line, is the policy-range amount.
4. The policy-range amount first fills what is left of the deductible (起付线), then the fund pays
   ``fund_ratio`` of the remainder (exactly; the claim's total is rounded once, see above), never beyond the
   annual fund cap (最高支付限额).
   No fund payment for a diagnosis outside the insured region's disease scope (000 §四(二)).
5. An employee's personal account pays the patient's share of covered lines (002 §三(四); 001 art. 13),
   plus what the policy allows (R7 excess at non-public institutions; out-of-catalog lines only if the
   policy says so, by default not), up to its balance.

R6 (002 §三(四)): the delivery fee is self-pay, always. R11 (002 §五(十三)): a patient suspended for
fraud gets neither fund nor personal-account payment. R12 (003 art. 19): the policy is the insured
region's, the catalog the treatment region's, and an off-site patient without a long-term off-site
registration (长期异地就医备案) valid on the visit day gets no fund (nor account) payment: self-pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from events.base import CENT, ZERO, CatalogCategory, DrugCode, InsuranceType, Money, Ownership
from services.domain.rules import (
    R6,
    R7,
    R10,
    R11,
    R12,
    check_r10_consent,
    check_r12_catalog_region,
    check_r12_insured_region_policy,
)

if TYPE_CHECKING:
    from services.reference.policies import InstitutionLevel, InsuranceTerms, RegionPolicy

__all__ = [
    "CategoryLookup",
    "Claim",
    "ClaimLine",
    "LineReason",
    "MappingCatalog",
    "RegionCatalog",
    "Split",
    "SplitLine",
    "TreatmentCatalog",
    "YearToDate",
    "consultation_fee",
    "split",
    "to_fen",
]


def to_fen(amount: Decimal) -> Decimal:
    """The one rounding rule of settlement: half up to the fen (分)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _non_negative(amount: Decimal) -> Decimal:
    if amount < ZERO:
        raise ValueError("amount must not be negative")
    return amount


Amount = Annotated[Money, AfterValidator(_non_negative)]
RegionCode = Annotated[str, Field(pattern=r"^\d{6}$")]
COVERED = frozenset({CatalogCategory.A, CatalogCategory.B})


class CategoryLookup(Protocol):
    def category(self, code: str) -> CatalogCategory:
        """The drug's catalog category; ``CatalogCategory.NONE`` when it is not in the catalog."""
        ...


class TreatmentCatalog(CategoryLookup, Protocol):
    """The treatment region's drug catalog (R12: the catalog is where the patient is treated)."""

    @property
    def region_code(self) -> str: ...


@dataclass(frozen=True)
class RegionCatalog:
    """Binds a catalog (e.g. ``services.reference.load_reference()``) to the region it is used for."""

    region_code: str
    catalog: CategoryLookup

    def category(self, code: str) -> CatalogCategory:
        return self.catalog.category(code)


@dataclass(frozen=True)
class MappingCatalog:
    """A catalog given as a plain mapping of drug code to category (absent = out of catalog)."""

    region_code: str
    categories: Mapping[str, CatalogCategory] = field(default_factory=dict)

    def category(self, code: str) -> CatalogCategory:
        return self.categories.get(code, CatalogCategory.NONE)


class ClaimLine(BaseModel):
    """One dispensed drug: quantity at the actual unit price, its price cap, and the R10 facts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    category: CatalogCategory = Field(description="as prescribed; the treatment catalog decides")
    quantity: int = Field(ge=1)
    unit_price: Amount
    price_cap: Amount | None = Field(default=None, description="R7 cap (hospital / procurement price)")
    in_indication: bool = True
    patient_consent: bool = False


class Claim(BaseModel):
    """Everything settlement needs to know about one dispensed prescription and its patient."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lines: tuple[ClaimLine, ...] = Field(min_length=1)
    delivery_fee: Amount = ZERO
    insurance_type: InsuranceType
    insured_region: RegionCode
    treatment_region: RegionCode
    institution_ownership: Ownership
    diagnosis_code: str = Field(min_length=1)
    suspended_for_fraud: bool = False
    personal_account_balance: Amount = ZERO
    offsite_filing_valid: bool | None = Field(
        default=None, description="R12: off-site, was a 长期异地就医备案 valid on the visit day (None: not known)")

    @property
    def off_site(self) -> bool:
        return self.insured_region != self.treatment_region

    @property
    def unfiled_off_site(self) -> bool:
        """R12 (003 art. 19): off-site without a valid registration on the day: no fund or account payment."""
        return self.off_site and self.offsite_filing_valid is False


class YearToDate(BaseModel):
    """The patient's figures this calendar year before this claim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deductible_met: Amount = ZERO
    fund_paid: Amount = ZERO

    def after(self, outcome: Split) -> YearToDate:
        return YearToDate(
            deductible_met=self.deductible_met + outcome.deductible_applied,
            fund_paid=self.fund_paid + outcome.fund,
        )


class LineReason(StrEnum):
    """Why part of a line is not fund-paid, or who else paid it."""

    NOT_COVERED = "not_covered"  # R10: category C or out of catalog
    OFF_INDICATION = "off_indication"  # R10
    CATEGORY_FROM_CATALOG = "category_from_catalog"  # R12: treatment catalog differs from the prescription
    ABOVE_PRICE_CAP = "above_price_cap"  # R7
    FIRST_SELF_PAY = "first_self_pay"  # category B 先行自付
    DEDUCTIBLE = "deductible"
    COINSURANCE = "coinsurance"  # the share above the fund ratio
    ANNUAL_CAP = "annual_cap"
    OUT_OF_DISEASE_SCOPE = "out_of_disease_scope"
    SUSPENDED_FOR_FRAUD = "suspended_for_fraud"  # R11
    OFF_SITE_UNFILED = "off_site_unfiled"  # R12: no valid 长期异地就医备案 on the day
    PERSONAL_ACCOUNT = "personal_account"


class SplitLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: str
    category: CatalogCategory
    quantity: int
    unit_price: Money
    price_cap: Money | None
    total: Money
    settled_amount: Money = Field(description="quantity x min(actual, cap): the most the fund may touch")
    excess_over_cap: Money
    fund: Money
    personal_account: Money
    self_pay: Money
    reasons: tuple[LineReason, ...]

    @model_validator(mode="after")
    def _adds_up(self) -> SplitLine:
        if self.fund + self.personal_account + self.self_pay != self.total:
            raise ValueError(f"line {self.drug_code} does not add up to {self.total}")
        return self


class Split(BaseModel):
    """The outcome: per line and in total; ``self_pay`` includes the delivery fee."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_region: str
    policy_version: str
    catalog_region: str
    insurance_type: InsuranceType
    lines: tuple[SplitLine, ...]
    drugs_total: Money
    delivery_fee: Money
    total: Money
    fund: Money
    personal_account: Money
    self_pay: Money
    deductible_applied: Money
    fund_cap_applied: Money = ZERO
    rules_applied: tuple[str, ...]

    @model_validator(mode="after")
    def _adds_up(self) -> Split:
        if self.fund + self.personal_account + self.self_pay != self.total:
            raise ValueError("fund + personal_account + self_pay must equal total")
        if self.total != self.drugs_total + self.delivery_fee:
            raise ValueError("total must be drugs_total + delivery_fee")
        if self.drugs_total != sum((line.total for line in self.lines), ZERO):
            raise ValueError("drugs_total must be the sum of the lines")
        if self.fund != sum((line.fund for line in self.lines), ZERO):
            raise ValueError("fund must be the sum of the lines")
        if self.personal_account != sum((line.personal_account for line in self.lines), ZERO):
            raise ValueError("personal_account must be the sum of the lines")
        return self


@dataclass
class _Running:
    """What is left this year (deductible, fund cap) and in the account, consumed line by line."""

    deductible: Decimal
    fund_cap: Decimal
    balance: Decimal


@dataclass
class _Draft:
    """A line after the first pass: what it is, and the fund's exact (unrounded) share of it."""

    line: ClaimLine
    category: CatalogCategory
    covered: bool
    total: Decimal
    settled: Decimal
    excess: Decimal
    exact_fund: Decimal
    reasons: list[LineReason]
    fund: Decimal = ZERO


def split(
    claim: Claim, policy: RegionPolicy, treatment_catalog: TreatmentCatalog, year_to_date: YearToDate
) -> Split:
    """Split a claim into fund / personal account / self-pay; raises ``RuleViolation`` (R10, R12)."""
    check_r12_insured_region_policy(policy.region_code, claim.insured_region)
    check_r12_catalog_region(treatment_catalog.region_code, claim.treatment_region)
    terms = policy.terms(claim.insurance_type)
    insured = not claim.suspended_for_fraud and not claim.unfiled_off_site
    has_account = claim.insurance_type is InsuranceType.EMPLOYEE and terms.personal_account is not None
    running = _Running(
        deductible=max(ZERO, terms.deductible - year_to_date.deductible_met),
        fund_cap=max(ZERO, terms.annual_fund_cap - year_to_date.fund_paid),
        balance=claim.personal_account_balance if insured and has_account else ZERO,
    )
    deductible_before = running.deductible
    in_scope = policy.disease_scope.covers(claim.diagnosis_code)
    with localcontext() as ctx:
        ctx.prec = 50
        drafts = [
            _draft_line(line, treatment_catalog.category(line.drug_code), claim, terms, in_scope, running)
            for line in claim.lines
        ]
        deductible_applied = to_fen(deductible_before - running.deductible)
        exact = sum((d.exact_fund for d in drafts), ZERO)
        fund_total = to_fen(exact)  # the one rounding of the fund's share
        cap_applied = ZERO
        if fund_total > running.fund_cap:
            cap_applied = fund_total - running.fund_cap
            fund_total = running.fund_cap
            for d in drafts:
                if d.exact_fund:
                    d.reasons.append(LineReason.ANNUAL_CAP)
        _allocate(drafts, fund_total, exact)
    lines = tuple(_finish_line(d, claim, terms, running) for d in drafts)

    drugs_total = sum((line.total for line in lines), ZERO)
    fund = sum((line.fund for line in lines), ZERO)
    personal_account = sum((line.personal_account for line in lines), ZERO)
    lines_self_pay = sum((line.self_pay for line in lines), ZERO)
    return Split(
        policy_region=policy.region_code,
        policy_version=policy.version,
        catalog_region=treatment_catalog.region_code,
        insurance_type=claim.insurance_type,
        lines=lines,
        drugs_total=drugs_total,
        delivery_fee=claim.delivery_fee,
        total=drugs_total + claim.delivery_fee,
        fund=fund,
        personal_account=personal_account,
        self_pay=lines_self_pay + claim.delivery_fee,
        deductible_applied=deductible_applied,
        fund_cap_applied=cap_applied,
        rules_applied=_rules_applied(claim, lines),
    )


def _allocate(drafts: list[_Draft], fund_total: Decimal, exact: Decimal) -> None:
    """Show the claim's rounded fund total on its lines: each line's exact share scaled to the total, floored to
    the fen, the fen left over to the lines with the largest remainders (claim order on ties). A line never gets
    more than its settled amount."""
    if fund_total <= ZERO or exact <= ZERO:
        return
    scale = fund_total / exact
    shares = [d.exact_fund * scale for d in drafts]
    floors = [share.quantize(CENT, rounding=ROUND_DOWN) for share in shares]
    for d, floor in zip(drafts, floors, strict=True):
        d.fund = min(floor, d.settled)
    left = fund_total - sum((d.fund for d in drafts), ZERO)
    order = sorted(range(len(drafts)), key=lambda i: (-(shares[i] - floors[i]), i))
    while left > ZERO:
        moved = False
        for i in order:
            if left <= ZERO:
                break
            if drafts[i].exact_fund and drafts[i].fund + CENT <= drafts[i].settled:
                drafts[i].fund += CENT
                left -= CENT
                moved = True
        if not moved:  # cannot happen: the fund's exact share never exceeds what the lines settle
            raise ValueError("fund share exceeds the settled amounts")


def _draft_line(
    line: ClaimLine,
    category: CatalogCategory,
    claim: Claim,
    terms: InsuranceTerms,
    in_scope: bool,
    running: _Running,
) -> _Draft:
    reasons: list[LineReason] = []
    if category is not line.category:
        reasons.append(LineReason.CATEGORY_FROM_CATALOG)
    covered = category in COVERED and line.in_indication
    if not covered:
        check_r10_consent(
            True,
            line.patient_consent,
            "out-of-catalog or out-of-indication drug needs the patient's recorded consent to self-pay",
            drug_code=line.drug_code,
            category=category.value,
        )
        reasons.append(LineReason.OFF_INDICATION if category in COVERED else LineReason.NOT_COVERED)

    total = line.unit_price * line.quantity
    settle_price = line.unit_price if line.price_cap is None else min(line.unit_price, line.price_cap)
    settled = settle_price * line.quantity
    excess = total - settled
    if excess:
        reasons.append(LineReason.ABOVE_PRICE_CAP)

    exact_fund = ZERO
    if covered and claim.suspended_for_fraud:
        reasons.append(LineReason.SUSPENDED_FOR_FRAUD)
    elif covered and claim.unfiled_off_site:
        reasons.append(LineReason.OFF_SITE_UNFILED)
    elif covered and not in_scope:
        reasons.append(LineReason.OUT_OF_DISEASE_SCOPE)
    elif covered:
        exact_fund = _fund_share(category, settled, terms, running, reasons)
    return _Draft(line, category, covered, total, settled, excess, exact_fund, reasons)


def _finish_line(d: _Draft, claim: Claim, terms: InsuranceTerms, running: _Running) -> SplitLine:
    payable = _account_payable(d.covered, claim, terms, d.total - d.fund, d.excess)
    personal_account = min(payable, running.balance)
    running.balance -= personal_account
    if personal_account:
        d.reasons.append(LineReason.PERSONAL_ACCOUNT)
    return SplitLine(
        drug_code=d.line.drug_code,
        category=d.category,
        quantity=d.line.quantity,
        unit_price=d.line.unit_price,
        price_cap=d.line.price_cap,
        total=d.total,
        settled_amount=d.settled,
        excess_over_cap=d.excess,
        fund=d.fund,
        personal_account=personal_account,
        self_pay=d.total - d.fund - personal_account,
        reasons=tuple(d.reasons),
    )


def _fund_share(
    category: CatalogCategory,
    settled: Decimal,
    terms: InsuranceTerms,
    running: _Running,
    reasons: list[LineReason],
) -> Decimal:
    first_self_pay = terms.category_b_first_self_pay if category is CatalogCategory.B else ZERO
    if first_self_pay:
        reasons.append(LineReason.FIRST_SELF_PAY)
    policy_range = settled * (1 - first_self_pay)
    towards_deductible = min(running.deductible, policy_range)
    running.deductible -= towards_deductible
    if towards_deductible:
        reasons.append(LineReason.DEDUCTIBLE)
    above_deductible = policy_range - towards_deductible
    if above_deductible and terms.fund_ratio < 1:
        reasons.append(LineReason.COINSURANCE)
    return above_deductible * terms.fund_ratio  # exact: the claim's total is rounded once (split)


def _account_payable(
    covered: bool, claim: Claim, terms: InsuranceTerms, patient_share: Decimal, excess: Decimal
) -> Decimal:
    """How much of the patient's share of a line the personal account may pay (before the balance)."""
    use = terms.personal_account
    if (use is None or claim.insurance_type is not InsuranceType.EMPLOYEE or claim.suspended_for_fraud
            or claim.unfiled_off_site):
        return ZERO
    if not covered and not use.out_of_catalog:
        return ZERO
    excess_allowed = claim.institution_ownership is Ownership.NON_PUBLIC and use.excess_over_cap_non_public
    return patient_share if excess_allowed else patient_share - excess


def _rules_applied(claim: Claim, lines: tuple[SplitLine, ...]) -> tuple[str, ...]:
    """Rule ids that changed the outcome from 'fund pays its ratio of everything at the actual price'."""
    applied: list[str] = []
    if claim.delivery_fee:
        applied.append(R6)
    if any(line.excess_over_cap for line in lines):
        applied.append(R7)
    if any(
        LineReason.NOT_COVERED in line.reasons or LineReason.OFF_INDICATION in line.reasons for line in lines
    ):
        applied.append(R10)
    if claim.suspended_for_fraud:
        applied.append(R11)
    if claim.off_site:
        applied.append(R12)
    return tuple(applied)


def consultation_fee(policy: RegionPolicy, institution_level: InstitutionLevel) -> Decimal:
    """The follow-up visit's fee: the region's ordinary outpatient consultation price for the level.

    002 §三(五): 按照公立医院普通门诊诊察类项目价格收费和支付; 000 §四(三); 001 art. 13. A non-public
    institution is paid at the public price too (000 §四(六); 003 art. 21).
    """
    return policy.consultation_fee[institution_level]
