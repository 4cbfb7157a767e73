"""SupplyLedger stream: one aggregate per patient and generic drug, the days of supply its running prescriptions hold
(R4: a long prescription's limit counts across every running prescription of the patient for the same generic)."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from events.base import Days, DomainEvent, DrugCode, Id, PatientRef, Text


class SupplyReserved(DomainEvent):
    """开具处方：该药品通用名下占用的用药天数（自开具日起）。"""

    patient_ref: PatientRef
    generic_code: Id
    prescription_id: UUID
    drug_code: DrugCode
    start: date
    days: Days


class SupplyReleased(DomainEvent):
    """处方被拒、撤销、过期（或余量撤销）：释放未配发的用药天数；``days`` 为保留的天数（0 = 全部释放）。"""

    prescription_id: UUID
    days: int
    reason: Text


SUPPLY_EVENTS: tuple[type[DomainEvent], ...] = (SupplyReserved, SupplyReleased)
