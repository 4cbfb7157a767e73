"""SupplyLedger: the days of supply a patient holds of one generic drug across running prescriptions (R4).

用药天数台账。One aggregate per (patient_ref, generic_code), saved in the same unit of work as the prescription
that reserves on it: two prescriptions issued at once for the same patient and generic drug both write the next
version of the same ledger, so one of them loses the optimistic-concurrency race, runs again and meets the other's
reservation. A prescription rejected, cancelled or expired releases what was not dispensed.

A reservation covers ``days`` from its ``start`` (the issue day, China time); on a later day only the days still
ahead count (the overlap of the running prescriptions with the future).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from events.supply import SupplyReleased, SupplyReserved
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.rules import check_r4_running_supply


class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    drug_code: str
    start: date
    days: int

    def days_ahead(self, day: date) -> int:
        """Days of this supply not yet used up on ``day`` (the issue day counts in full)."""
        return max(0, (self.start + timedelta(days=self.days) - day).days)


class SupplyLedger(Aggregate):
    """一位参保人、一个药品通用名：所有在用处方的用药天数。"""

    creation_event = SupplyReserved

    patient_ref: str
    generic_code: str
    reservations: dict[UUID, Reservation] = Field(default_factory=dict)

    @staticmethod
    def id_for(patient_ref: str, generic_code: str) -> UUID:
        return natural_id("supply", f"{patient_ref}/{generic_code}")

    def running_days(self, day: date) -> int:
        """The days of supply still ahead on ``day`` across the running prescriptions."""
        return sum(r.days_ahead(day) for r in self.reservations.values())

    @classmethod
    def reserve(
        cls,
        existing: SupplyLedger | None,
        *,
        clock: Clock,
        today: date,
        patient_ref: str,
        generic_code: str,
        prescription_id: UUID,
        drug_code: str,
        days: int,
        limit: int,
    ) -> SupplyLedger:
        """R4: reserve ``days`` from ``today`` unless the days still running plus these exceed ``limit``.
        ``existing`` is what the repository holds for ``id_for(patient_ref, generic_code)``, or None."""
        running = existing.running_days(today) if existing is not None else 0
        check_r4_running_supply(running_days=running, days=days, limit=limit, generic_code=generic_code,
                                prescription_id=prescription_id)
        fields = {"patient_ref": patient_ref, "generic_code": generic_code, "prescription_id": prescription_id,
                  "drug_code": drug_code, "start": today, "days": days}
        if existing is None:
            return cls._create(SupplyReserved, clock, cls.id_for(patient_ref, generic_code), **fields)
        existing._trigger(SupplyReserved, clock, **fields)
        return existing

    def release(self, *, clock: Clock, prescription_id: UUID, keep_days: int, reason: str) -> bool:
        """Release a prescription's reservation down to ``keep_days`` (what was dispensed); False if nothing
        changes (no reservation, or already at most that)."""
        held = self.reservations.get(prescription_id)
        if held is None or held.days <= keep_days:
            return False
        self._trigger(SupplyReleased, clock, prescription_id=prescription_id, days=keep_days, reason=reason)
        return True

    @classmethod
    def _created(cls, event: SupplyReserved) -> Self:
        ledger = cls(id=event.originator_id, patient_ref=event.patient_ref, generic_code=event.generic_code)
        ledger._apply(event)
        return ledger

    def _apply(self, event: object) -> None:
        if isinstance(event, SupplyReserved):
            self.reservations = {
                **self.reservations,
                event.prescription_id: Reservation(drug_code=event.drug_code, start=event.start, days=event.days),
            }
        elif isinstance(event, SupplyReleased):
            held = self.reservations[event.prescription_id]
            rest = {k: v for k, v in self.reservations.items() if k != event.prescription_id}
            if event.days > 0:
                rest[event.prescription_id] = held.model_copy(update={"days": event.days})
            self.reservations = rest


project_supply_ledger = make_projector(SupplyLedger)
