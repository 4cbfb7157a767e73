"""Prescription stream: issue → review → routing → dispensing → delivery/collection → settlement → audit.

处方流转全过程事件；每个事件都带 business_type（R14）。
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from events.base import (
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


class DispensedLine(BaseModel):
    """一次配药的一行：实际数量、实际单价、限价（R7）和扫码的追溯码（R8）。"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    quantity: Quantity
    unit_price: UnitPrice
    price_cap: UnitPrice
    trace_codes: tuple[TraceCodeStr, ...] = Field(default=(), max_length=QUANTITY_MAX)


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
    """配药（允许分次，累计不超过处方量，R13）。"""

    dispenser_id: Id
    dispense_no: Version
    lines: DispensedLines
    complete: bool


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
