"""TraceCode: one aggregate per drug traceability code, so "sold once" (R8) holds platform-wide.

The aggregate id is derived from the code, so two concurrent first sales both write version 1 of the same
stream and the event store's optimistic concurrency lets only one commit; the loser reloads and gets R8.
"""

from __future__ import annotations

import re
from typing import Self
from uuid import UUID

from events.base import BusinessType
from events.trace_code import TraceCodeReturned, TraceCodeSold
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand
from services.domain.rules import check_r8_sold_once, check_r14_offline_sale

TRACE_CODE_PATTERN = re.compile(r"^\d{20}$")


class TraceCode(Aggregate):
    """药品追溯码（20 位），扫码销售一次。"""

    creation_event = TraceCodeSold

    code: str
    drug_code: str
    sold: bool = True
    seller_id: str | None = None
    prescription_id: UUID | None = None
    sales: int = 1

    @staticmethod
    def id_for(code: str) -> UUID:
        return natural_id("trace-code", code)

    @staticmethod
    def check_sellable(
        existing: TraceCode | None,
        *,
        code: str,
        drug_code: str,
        business_type: BusinessType,
        prescription_id: UUID | None,
    ) -> None:
        """R8 (sold once, same drug) and R14 (an offline sale is never tied to an online prescription)."""
        if not TRACE_CODE_PATTERN.match(code):
            raise InvalidCommand("trace code must be 20 digits", trace_code=code)
        check_r14_offline_sale(business_type, prescription_id, trace_code=code)
        if existing is not None and existing.code != code:
            raise InvalidCommand("trace code aggregate does not match the code", trace_code=code)
        check_r8_sold_once(existing, code=code, drug_code=drug_code, prescription_id=prescription_id)

    @classmethod
    def sell(
        cls,
        existing: TraceCode | None,
        *,
        clock: Clock,
        code: str,
        drug_code: str,
        seller_id: str,
        business_type: BusinessType,
        prescription_id: UUID | None = None,
        patient_ref: str | None = None,
    ) -> TraceCode:
        """Sell a code. ``existing`` is what the repository holds for ``id_for(code)``, or None."""
        cls.check_sellable(
            existing,
            code=code,
            drug_code=drug_code,
            business_type=business_type,
            prescription_id=prescription_id,
        )
        fields = {
            "business_type": business_type,
            "code": code,
            "drug_code": drug_code,
            "seller_id": seller_id,
            "prescription_id": prescription_id,
            "patient_ref": patient_ref,
        }
        if existing is None:
            return cls._create(TraceCodeSold, clock, cls.id_for(code), **fields)
        existing._trigger(TraceCodeSold, clock, **fields)
        return existing

    def return_to_stock(
        self, *, clock: Clock, business_type: BusinessType, prescription_id: UUID | None, reason: str
    ) -> None:
        if not self.sold:
            raise IllegalTransition("in_stock", "return_to_stock", trace_code=self.code)
        if prescription_id != self.prescription_id:
            raise InvalidCommand(
                "trace code was sold for another prescription",
                trace_code=self.code,
                sold_for=self.prescription_id,
            )
        self._trigger(
            TraceCodeReturned,
            clock,
            business_type=business_type,
            code=self.code,
            prescription_id=prescription_id,
            reason=reason,
        )

    @classmethod
    def _created(cls, event: TraceCodeSold) -> Self:
        return cls(
            id=event.originator_id,
            code=event.code,
            drug_code=event.drug_code,
            seller_id=event.seller_id,
            prescription_id=event.prescription_id,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, TraceCodeSold):
            self.sold = True
            self.seller_id = event.seller_id
            self.prescription_id = event.prescription_id
            self.sales += 1
        elif isinstance(event, TraceCodeReturned):
            self.sold = False


project_trace_code = make_projector(TraceCode)
