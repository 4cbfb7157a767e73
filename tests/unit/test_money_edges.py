"""Edge input that must be a validation error (422 / a rejection), never an unexpected exception."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from events.base import to_money
from services.application import commands as c


@pytest.mark.parametrize("value", ["1e40", "9" * 40, Decimal("1E+30")])
def test_money_out_of_range_is_a_value_error(value: object) -> None:
    with pytest.raises(ValueError, match=r"out of range|decimal places"):
        to_money(value)


def test_nul_in_command_text_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="reason"):
        c.parse_command({"kind": "cancel_prescription", "prescription_id": "00000000-0000-0000-0000-000000000001",
                         "reason": "bad\x00text", "cancelled_by": "H1"})


@pytest.mark.parametrize("fee", ["-10.00", "1e1", "10", "10.0", "+10.00", " 10.00", "10.001", 10, 10.5])
def test_money_consultation_fee_outside_the_declared_pattern_is_refused_naming_the_field(fee: object) -> None:
    """Issue 13: ``consultation_fee: "-10.00"`` and ``"1e1"`` were accepted; the OpenAPI pattern is ^\\d{1,5}\\.\\d{2}$."""
    command = {"kind": "arrange_delivery", "prescription_id": "00000000-0000-0000-0000-000000000001",
               "delivery_enterprise_id": "DE1", "delivery_fee": fee, "fee_disclosed": True}
    with pytest.raises(ValidationError, match="delivery_fee"):
        c.parse_command(command)


@pytest.mark.parametrize("price", ["-24.50", "1e1", "24.5", 24])
def test_money_unit_price_outside_the_declared_pattern_is_refused_naming_the_field(price: object) -> None:
    line = {"drug_code": "XA10BAA001A001030101", "quantity": 1, "unit_price": price,
            "trace_codes": ["12345678901234567890"]}
    with pytest.raises(ValidationError, match=r"lines\.0\.unit_price"):
        c.parse_command({"kind": "dispense_prescription", "prescription_id": "00000000-0000-0000-0000-000000000001",
                         "dispenser_id": "PH1", "lines": [line]})


def test_money_a_well_formed_amount_and_a_decimal_from_python_are_accepted() -> None:
    command = c.ArrangeDelivery(prescription_id="00000000-0000-0000-0000-000000000001", delivery_enterprise_id="DE1",
                                delivery_fee="6.50", fee_disclosed=True)
    assert command.delivery_fee == Decimal("6.50")
    assert c.ArrangeDelivery.model_validate(
        {**command.model_dump(), "delivery_fee": Decimal("7.00")}).delivery_fee == Decimal("7.00")
