"""The HTTP request bodies are written out as classes; each must stay its command minus what the server fills in."""

from __future__ import annotations

from typing import Any

import pytest

from services.api import models as m
from services.application import commands as c

SERVER_FILLED = {"kind", "command_id", "expected_version"}


def _properties(model: type[Any], drop: set[str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {name: spec for name, spec in schema["properties"].items() if name not in drop}


@pytest.mark.parametrize("body", list(m.BODIES), ids=lambda b: b.__name__)
def test_body_is_its_command_minus_what_the_server_fills_in(body: type[Any]) -> None:
    command, implied = m.BODIES[body]
    drop = SERVER_FILLED | set(implied)
    assert set(body.model_fields) - {"expected_version"} == set(command.model_fields) - drop
    assert _properties(body, {"expected_version"}) == _properties(command, drop)
    assert ("expected_version" in body.model_fields) == ("expected_version" in command.model_fields)
    required = set(body.model_json_schema().get("required", []))
    assert required == set(command.model_json_schema().get("required", [])) - drop


def test_every_party_command_has_a_body() -> None:
    party_commands = {c.RecordFollowUpVisit, c.IssuePrescription, c.CancelPrescription, c.RoutePrescription,
                      c.ApprovePrescription, c.RejectPrescription, c.AcceptPrescription, c.ReturnPrescription,
                      c.DispensePrescription, c.WithdrawDispense, c.ReturnPacks, c.ExtendValidity,
                      c.ArrangeDelivery, c.MarkDelivered,
                      c.MarkCollected, c.RefuseFeesInAudit, c.ClawBackFees, c.RefuseConsultationFees,
                      c.ClawBackConsultationFees, c.RetrySettlement, c.WriteOffSettlement, c.ReverseSettlement}
    assert {command for command, _ in m.BODIES.values()} == party_commands


def test_bodies_refuse_nul_anywhere_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="NUL"):
        m.ReturnCreate(reason="out of\x00stock")
    with pytest.raises(ValueError, match="NUL"):
        m.RejectionCreate(reasons=("fine", "bad\x00"))
    with pytest.raises(ValueError, match="Extra inputs"):
        m.ApprovalCreate.model_validate({"pharmacist_id": "someone else"})
