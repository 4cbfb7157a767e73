"""TraceCode stream: one aggregate per 20-digit drug traceability code (药品追溯码), sold once (R8)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import Field

from events.base import BusinessType, DomainEvent, DrugCode, Id, PatientRef, Text, TraceCodeStr, register_upcaster


class TraceCodeSold(DomainEvent):
    """扫码销售。线下（offline）销售也记录，以便发现同一追溯码被重复销售。v2：拆零销售记录售出份额
    （``units`` / ``pack_units``；None = 整盒）。"""

    schema_version: int = 2
    business_type: BusinessType
    code: TraceCodeStr
    drug_code: DrugCode
    seller_id: Id
    prescription_id: UUID | None = None
    patient_ref: PatientRef | None = None
    units: int | None = Field(default=None, ge=1, description="split-pack sale: units sold from the pack")
    pack_units: int | None = Field(default=None, ge=2, description="split-pack sale: units the pack holds")


@register_upcaster("TraceCodeSold", 1)
def _sold_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data  # a v1 sale is a whole pack


class TraceCodeReturned(DomainEvent):
    """配药撤销或整盒退回，追溯码退回库存，可再次销售（拆零：该次售出的份额退回）。"""

    business_type: BusinessType
    code: TraceCodeStr
    prescription_id: UUID | None = None
    reason: Text


TRACE_CODE_EVENTS: tuple[type[DomainEvent], ...] = (TraceCodeSold, TraceCodeReturned)
