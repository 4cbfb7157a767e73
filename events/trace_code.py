"""TraceCode stream: one aggregate per 20-digit drug traceability code (药品追溯码), sold once (R8)."""

from __future__ import annotations

from uuid import UUID

from events.base import BusinessType, DomainEvent, DrugCode, Id, PatientRef, Text, TraceCodeStr


class TraceCodeSold(DomainEvent):
    """扫码销售。线下（offline）销售也记录，以便发现同一追溯码被重复销售。"""

    business_type: BusinessType
    code: TraceCodeStr
    drug_code: DrugCode
    seller_id: Id
    prescription_id: UUID | None = None
    patient_ref: PatientRef | None = None


class TraceCodeReturned(DomainEvent):
    """配药撤销，追溯码退回库存，可再次销售。"""

    business_type: BusinessType
    code: TraceCodeStr
    prescription_id: UUID | None = None
    reason: Text


TRACE_CODE_EVENTS: tuple[type[DomainEvent], ...] = (TraceCodeSold, TraceCodeReturned)
