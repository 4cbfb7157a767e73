"""Application-level refusals, beside the domain's own (services.domain.errors)."""

from __future__ import annotations

from typing import Any

from services.domain.errors import DomainError, NotFound


class AlreadyExists(DomainError):
    """A command would create an aggregate whose (derived) id is already taken."""

    def __init__(self, kind: str, key: Any) -> None:
        self.kind = kind
        self.key = str(key)
        self.ids = {"key": self.key}
        super().__init__(f"{kind} {key} already exists")


class ConcurrencyConflict(DomainError):
    """Concurrent writers kept winning: the command was re-checked and retried, and still could not commit."""

    def __init__(self, command_type: str, attempts: int) -> None:
        self.command_type = command_type
        self.attempts = attempts
        self.ids: dict[str, str] = {}
        super().__init__(f"{command_type}: conflicting concurrent changes, gave up after {attempts} attempts")


class StaleVersion(DomainError):
    """The caller decided on a version of the aggregate that is no longer current."""

    def __init__(self, aggregate_id: Any, expected: int, actual: int) -> None:
        self.ids = {"aggregate_id": str(aggregate_id), "expected": str(expected), "actual": str(actual)}
        super().__init__(f"{aggregate_id} is at version {actual}, not the expected {expected}")


class PatientStatusNotFound(NotFound):
    kind = "patient status"
