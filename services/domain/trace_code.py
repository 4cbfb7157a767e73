"""TraceCode: one aggregate per drug traceability code, so "sold once" (R8) holds platform-wide.

The aggregate id is derived from the code, so two concurrent first sales both write version 1 of the same
stream and the event store's optimistic concurrency lets only one commit; the loser reloads and gets R8.
"""

from __future__ import annotations

import re
from typing import Self
from uuid import UUID

from pydantic import Field

from events.base import BusinessType
from events.prescription import SplitPack
from events.trace_code import TraceCodeReturned, TraceCodeSold
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand
from services.domain.rules import (
    check_r8_code_format,
    check_r8_pack_units,
    check_r8_sold_once,
    check_r14_offline_sale,
)

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
    units_sold: int = 0
    """Split-pack sales (拆零): units of the opened pack sold so far, per prescription in ``portions``."""
    pack_units: int | None = None
    portions: dict[str, int] = Field(default_factory=dict)

    @staticmethod
    def id_for(code: str) -> UUID:
        return natural_id("trace-code", code)

    @staticmethod
    def check_format(code: str) -> None:
        """R8: a drug traceability code is the 20-digit national code; anything else is refused."""
        check_r8_code_format(code, TRACE_CODE_PATTERN.fullmatch(code) is not None)

    @staticmethod
    def check_sellable(
        existing: TraceCode | None,
        *,
        code: str,
        drug_code: str,
        business_type: BusinessType,
        prescription_id: UUID | None,
        split: SplitPack | None = None,
    ) -> None:
        """R8 (20-digit code, sold once, same drug; a split pack never sells more units than it holds) and R14 (an
        offline sale is never tied to an online prescription)."""
        TraceCode.check_format(code)
        check_r14_offline_sale(business_type, prescription_id, trace_code=code)
        if existing is not None and existing.code != code:
            raise InvalidCommand("trace code aggregate does not match the code", trace_code=code)
        check_r8_sold_once(existing, code=code, drug_code=drug_code, prescription_id=prescription_id)
        if existing is not None:
            check_r8_pack_units(
                opened_units=existing.pack_units if existing.units_sold else None,
                units_sold=existing.units_sold,
                units=None if split is None else split.units,
                pack_units=None if split is None else split.pack_units,
                trace_code=code,
            )

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
        split: SplitPack | None = None,
    ) -> TraceCode:
        """Sell a code (a whole pack, or ``split``: units of the opened pack). ``existing`` is what the repository
        holds for ``id_for(code)``, or None."""
        cls.check_sellable(
            existing,
            code=code,
            drug_code=drug_code,
            business_type=business_type,
            prescription_id=prescription_id,
            split=split,
        )
        fields: dict[str, object] = {
            "business_type": business_type,
            "code": code,
            "drug_code": drug_code,
            "seller_id": seller_id,
            "prescription_id": prescription_id,
            "patient_ref": patient_ref,
            "units": None if split is None else split.units,
            "pack_units": None if split is None else split.pack_units,
        }
        if existing is None:
            return cls._create(TraceCodeSold, clock, cls.id_for(code), **fields)
        existing._trigger(TraceCodeSold, clock, **fields)
        return existing

    def return_to_stock(
        self, *, clock: Clock, business_type: BusinessType, prescription_id: UUID | None, reason: str
    ) -> None:
        """The pack (or, for a split pack, the units sold for ``prescription_id``) goes back to stock: an event."""
        key = str(prescription_id)
        if self.units_sold:
            if key not in self.portions:
                raise InvalidCommand(
                    "no units of this pack were sold for that prescription", trace_code=self.code,
                    prescription_id=prescription_id)
        else:
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

    def sold_for(self, prescription_id: UUID) -> bool:
        """Whether this pack (or units of it) is currently sold for ``prescription_id``."""
        if self.units_sold:
            return str(prescription_id) in self.portions
        return self.sold and self.prescription_id == prescription_id

    @classmethod
    def _created(cls, event: TraceCodeSold) -> Self:
        code = cls(id=event.originator_id, code=event.code, drug_code=event.drug_code, sales=0, sold=False)
        code._apply(event)
        return code

    def _apply(self, event: object) -> None:
        if isinstance(event, TraceCodeSold):
            self.seller_id = event.seller_id
            self.prescription_id = event.prescription_id
            self.sales += 1
            if event.units is None:
                self.sold = True
            else:
                key = str(event.prescription_id)
                self.portions = {**self.portions, key: self.portions.get(key, 0) + event.units}
                self.pack_units = event.pack_units
                self.units_sold += event.units
                self.sold = self.pack_units is not None and self.units_sold >= self.pack_units
        elif isinstance(event, TraceCodeReturned):
            key = str(event.prescription_id)
            if key in self.portions:
                self.units_sold -= self.portions[key]
                self.portions = {k: v for k, v in self.portions.items() if k != key}
                if not self.units_sold:
                    self.pack_units = None
            self.sold = False


project_trace_code = make_projector(TraceCode)
