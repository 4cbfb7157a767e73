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
