"""What a command came to: accepted with the events it recorded, or rejected with a rule id and a reason.

An ``Outcome`` is also what the idempotency store keeps: a retried command id gets the first outcome back
(``replayed=True``) and records nothing new.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class EventRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    aggregate_id: UUID
    version: int
    event_type: str


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_type: str
    command_id: str | None = None
    status: Literal["ok", "rejected"]
    aggregate_id: UUID | None = Field(default=None, description="the aggregate the command addressed or created")
    events: tuple[EventRef, ...] = ()
    error: str | None = Field(default=None, description="error class, e.g. RuleViolation, IllegalTransition")
    rule_id: str | None = Field(default=None, description="the rule id (services.domain.rules) when a rule refused the command")
    reason: str | None = None
    ids: dict[str, str] = Field(default_factory=dict)
    replayed: bool = Field(default=False, description="true when returned from the idempotency store")

    @property
    def ok(self) -> bool:
        return self.status == "ok"
