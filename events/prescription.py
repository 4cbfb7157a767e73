"""Prescription stream: issue → review → routing → dispensing → delivery/collection → settlement → audit.

处方流转全过程事件；每个事件都带 business_type（R14）。
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from events.base import (
    CENT,
    ITEMS_MAX,
    QUANTITY_MAX,
    REASONS_MAX,
    TRACE_CODES_MAX,
    ZERO,
    BusinessType,
    CatalogCategory,
    Days,
    DomainEvent,
    DrugCode,
    Id,
    InsuranceType,
    LongText,
    Money,
    Name,
    Ownership,
    PatientRef,
    Quantity,
    RealNameMethod,
    Region,
    Sealed,
    Text,
    TraceCodeStr,
    UnitPrice,
    UTCDateTime,
    Version,
    register_upcaster,
)


class PrescriptionItem(BaseModel):
    """处方药品明细：国家医保药品编码、名称、规格、数量（盒）、用药天数、单价、目录类别。

    丙类（C）、目录外（NONE）或超适应症（off_indication）用药全自费，须记录患者知情同意（R10）。
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    name: Name
    spec: Name
    quantity: Quantity
    days_supply: Days
    unit_price: UnitPrice
    category: CatalogCategory
    off_indication: bool = False
    patient_consent: bool = False

    @property
    def self_pay_only(self) -> bool:
        return self.category in (CatalogCategory.C, CatalogCategory.NONE) or self.off_indication


PACK_UNITS_MAX = 10_000
"""Units (tablets, capsules, doses) in one pack, for split-pack sales."""


class SplitPack(BaseModel):
    """拆零销售：从一个已扫码的整盒中售出 ``units``（共 ``pack_units``）。The pack's own trace code is scanned; its
    aggregate counts the units sold until the pack is used up (R8: never more than the pack holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    units: int = Field(ge=1, le=PACK_UNITS_MAX, description="units sold from the pack")
    pack_units: int = Field(ge=2, le=PACK_UNITS_MAX, description="units a whole pack holds")

    @model_validator(mode="after")
    def _a_part(self) -> SplitPack:
        if self.units >= self.pack_units:
            raise ValueError("a split-pack sale sells part of a pack (units < pack_units); sell a whole pack as such")
        return self


class DispensedLine(BaseModel):
    """一次配药的一行：实际数量、实际单价、扫码的追溯码（R8，每盒一个）；拆零时记录整盒追溯码与售出份额。

    ``price_cap`` and ``payment_standard`` (R7) are the authority's registry values on the dispense day, written by
    the platform into ``PrescriptionDispensed`` (R17); a request may leave them out, and one that states a value
    the registry does not hold is refused. Events before schema v2 carry the cap the dispenser declared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    quantity: Quantity
    unit_price: UnitPrice = Field(description="actual price per pack (split sale: for the units sold)")
    price_cap: UnitPrice | None = Field(
        default=None, description="R7: the registry's price cap per pack on the day (set by the platform)")
    payment_standard: UnitPrice | None = Field(
        default=None, description="R7: the registry's payment standard per pack on the day (set by the platform)")
    trace_codes: tuple[TraceCodeStr, ...] = Field(
        default=(), max_length=QUANTITY_MAX, description="R8: one 20-digit code per pack (split sale: the pack's)")
    split: SplitPack | None = Field(default=None, description="split-pack sale (拆零): quantity 1, one code")

    def _share(self, per_pack: Decimal) -> Decimal:
        """A per-pack figure for this line's unit: the pack's, or the split sale's share (rounded down to the cent)."""
        if self.split is None:
            return per_pack
        return (per_pack * self.split.units / self.split.pack_units).quantize(CENT, rounding=ROUND_DOWN)

    @property
    def cap_per_unit(self) -> Decimal | None:
        return None if self.price_cap is None else self._share(self.price_cap)

    @property
    def settlement_price(self) -> Decimal:
        """R7: what the insurance pays on per unit of this line: min(actual, payment standard, cap) of those known."""
        known = [self.unit_price, *(self._share(v) for v in (self.payment_standard, self.price_cap) if v is not None)]
        return min(known)


def _trace_codes_within_limit(lines: tuple[DispensedLine, ...]) -> tuple[DispensedLine, ...]:
    total = sum(len(line.trace_codes) for line in lines)
    if total > TRACE_CODES_MAX:
        raise ValueError(f"{total} trace codes in one dispense; at most {TRACE_CODES_MAX}")
    return lines


PrescriptionItems = Annotated[tuple[PrescriptionItem, ...], Field(min_length=1, max_length=ITEMS_MAX)]
"""The items of one prescription (at most ITEMS_MAX)."""
DispensedLines = Annotated[
    tuple[DispensedLine, ...], Field(min_length=1, max_length=ITEMS_MAX), AfterValidator(_trace_codes_within_limit)
]
"""The lines of one dispense (at most ITEMS_MAX, with at most TRACE_CODES_MAX trace codes in all)."""


class DispenserKind(StrEnum):
    PHARMACY = "pharmacy"
    HOSPITAL = "hospital"


class RoutingBasis(StrEnum):
    PATIENT_CHOICE = "patient_choice"
    ROUTING_RULE = "routing_rule"


class PrescriptionEvent(DomainEvent):
    business_type: BusinessType


class PrescriptionIssued(PrescriptionEvent):
    """医师开具电子处方并电子签名（v2：可带患者自选的定点零售药店 ``preferred_pharmacy_id``；v3：处方号、
    R4 的登记事实——诊断是否在本统筹区慢病目录、是否处于主管部门宣布的突发公共卫生事件期间）。

    ``physician_signature`` is the Ed25519 signature over ``services.domain.signature.prescription_content`` (R2),
    verifiable from this event (``prescription_ref`` and the items are here, the encounter id and diagnosis too).
    ``emergency_declared`` and ``chronic_listed`` are the registries' answers on the issue day (R17), never the
    hospital's."""

    schema_version: int = 3
    prescription_ref: Id | None = Field(default=None, description="the hospital's prescription number (v3)")
    encounter_id: UUID
    hospital_id: Id
    physical_institution_id: Id
    institution_ownership: Ownership
    pooling_region: Region
    insured_region: Region
    insurance_type: InsuranceType
    patient_ref: PatientRef
    patient_sealed: Sealed | None = None
    physician_id: Id
    physician_signature: Text
    diagnosis_code: Id
    diagnosis_name: Name
    items: PrescriptionItems
    valid_until: UTCDateTime
    emergency_declared: bool = False
    chronic_listed: bool | None = Field(
        default=None, description="R4: the diagnosis is on the region's stable chronic disease list on the day (v3)")
    justification: LongText | None = None
    preferred_pharmacy_id: Id | None = Field(
        default=None, description="the patient's chosen designated pharmacy; None = routing rule"
    )


@register_upcaster("PrescriptionIssued", 1)
def _issued_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["preferred_pharmacy_id"] = None
    return data


@register_upcaster("PrescriptionIssued", 2)
def _issued_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["prescription_ref"] = None
    data["chronic_listed"] = None
    return data


class PrescriptionApproved(PrescriptionEvent):
    """药师审核通过。"""

    pharmacist_id: Id


class PrescriptionRejected(PrescriptionEvent):
    """药师审核不通过（v2：可给出多条理由；v1 只有一条 ``reason``）。"""

    schema_version: int = 2
    pharmacist_id: Id
    reasons: tuple[Text, ...] = Field(min_length=1, max_length=REASONS_MAX)


@register_upcaster("PrescriptionRejected", 1)
def _rejected_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["reasons"] = [data.pop("reason")]
    return data


class PrescriptionRouted(PrescriptionEvent):
    """处方流转至定点零售药店（或由医院自行配药）。"""

    dispenser_kind: DispenserKind
    dispenser_id: Id
    dispenser_ownership: Ownership
    basis: RoutingBasis


class PrescriptionAccepted(PrescriptionEvent):
    dispenser_id: Id


class PrescriptionReturned(PrescriptionEvent):
    """药店拒收退回，处方回到可流转状态。"""

    dispenser_id: Id
    reason: Text


class PrescriptionDispensed(PrescriptionEvent):
    """配药（允许分次，累计不超过处方量，R13）。v2: lines carry the registry's cap and payment standard (R7/R17),
    optional, and split-pack sales; v1 lines carry the cap the dispenser declared."""

    schema_version: int = 2
    dispenser_id: Id
    dispense_no: Version
    lines: DispensedLines
    complete: bool


@register_upcaster("PrescriptionDispensed", 1)
def _dispensed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data  # every v1 field keeps its meaning; the new ones default to None


class PacksReturned(PrescriptionEvent):
    """整盒退回（未交付前）：这些追溯码回到库存，可再次销售；所在配药行的数量相应减少。"""

    dispense_no: Version
    trace_codes: tuple[TraceCodeStr, ...] = Field(min_length=1, max_length=TRACE_CODES_MAX)
    reason: Text


class PrescriptionValidityExtended(PrescriptionEvent):
    """医师延长处方有效期（R19：自开具起最长 3 天）。"""

    physician_id: Id
    valid_until: UTCDateTime
    reason: Text


class DispenseWithdrawn(PrescriptionEvent):
    """撤销一次配药，追溯码退回。"""

    dispense_no: Version
    reason: Text
    trace_codes: tuple[TraceCodeStr, ...] = Field(default=(), max_length=TRACE_CODES_MAX)


class DeliveryArranged(PrescriptionEvent):
    """安排配送；配送费事先告知患者，医保不予支付（R6）。"""

    delivery_enterprise_id: Id
    delivery_fee: Money
    address_ref: PatientRef | None = Field(
        default=None, description="keyed pseudonym of the delivery address (never the address itself); None = not given"
    )


class PrescriptionDelivered(PrescriptionEvent):
    delivery_enterprise_id: Id


class PrescriptionCollected(PrescriptionEvent):
    verification_method: RealNameMethod


class PrescriptionSettled(PrescriptionEvent):
    """结算：统筹基金 / 个人账户 / 自费 的拆分由结算服务计算后传入。"""

    settled_with: Id
    settled_with_kind: DispenserKind
    patient_ref: PatientRef
    verification_method: RealNameMethod
    total: Money
    fund: Money
    personal_account: Money
    self_pay: Money
    delivery_fee: Money
    policy_version: Id
    policy_region: Region
    catalog_region: Region
    settlement_ref: Id
    payee_id: Id | None = None
    """Whom the agency pays (money helper): the dispenser, or the delivery enterprise where the region's policy
    says so (Jinan, 004 §六); None on settlements recorded before it was kept (= ``settled_with``)."""
    deductible_applied: Money = ZERO
    fund_cap_applied: Money = ZERO


class PrescriptionCancelled(PrescriptionEvent):
    """作废；部分配药后作废只作废剩余部分。"""

    reason: Text
    cancelled_by: Id
    remainder_only: bool


class PrescriptionExpired(PrescriptionEvent):
    valid_until: UTCDateTime
    remainder_only: bool


class FeesRefusedInAudit(PrescriptionEvent):
    """审核拒付（从当月结算中扣除）。"""

    amount: Money
    reason: Text
    audit_ref: Id
    acted_by: Id | None = None
    """The acting agency (e.g. "agency:370100"); None on events recorded before it was kept."""


class FeesClawedBack(PrescriptionEvent):
    """已支付违规费用追回。"""

    amount: Money
    reason: Text
    audit_ref: Id
    acted_by: Id | None = None
    """The acting agency (e.g. "agency:370100"); None on events recorded before it was kept."""


class RuleFlagged(PrescriptionEvent):
    """规则标记：记录在案、报告稽核，不阻止业务。"""

    rule_id: str = Field(pattern=r"^R\d{1,2}$")
    reason: LongText
    details: dict[str, str] = Field(default_factory=dict)


PRESCRIPTION_EVENTS: tuple[type[DomainEvent], ...] = (
    PrescriptionIssued,
    PrescriptionApproved,
    PrescriptionRejected,
    PrescriptionRouted,
    PrescriptionAccepted,
    PrescriptionReturned,
    PrescriptionDispensed,
    DispenseWithdrawn,
    PacksReturned,
    PrescriptionValidityExtended,
    DeliveryArranged,
    PrescriptionDelivered,
    PrescriptionCollected,
    PrescriptionSettled,
    PrescriptionCancelled,
    PrescriptionExpired,
    FeesRefusedInAudit,
    FeesClawedBack,
    RuleFlagged,
)
