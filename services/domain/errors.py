"""Domain errors. Later layers translate these (HTTP status, rx.rejections messages); none is an assert."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every refusal the domain makes."""


class RuleViolation(DomainError):
    """A command broke rule ``rule_id`` (an id of the catalogue in ``services.domain.rules``); ``ids`` name the
    aggregates and codes involved. A flag is a violation recorded instead of raised."""

    def __init__(self, rule_id: str, reason: str, **ids: Any) -> None:
        self.rule_id = rule_id
        self.reason = reason
        self.ids = {k: str(v) for k, v in ids.items()}
        detail = ", ".join(f"{k}={v}" for k, v in self.ids.items())
        super().__init__(f"{rule_id}: {reason}" + (f" ({detail})" if detail else ""))


class IllegalTransition(DomainError):
    """The command is not allowed in the aggregate's current state."""

    def __init__(self, from_state: str, command: str, **ids: Any) -> None:
        self.from_state = from_state
        self.command = command
        self.ids = {k: str(v) for k, v in ids.items()}
        super().__init__(f"cannot {command} in state {from_state}")


class InvalidCommand(DomainError):
    """The command's own data is inconsistent (amounts that don't add up, unknown dispense number...)."""

    def __init__(self, reason: str, **ids: Any) -> None:
        self.reason = reason
        self.ids = {k: str(v) for k, v in ids.items()}
        super().__init__(reason)


class PartyNotEligible(DomainError):
    """A pharmacist, pharmacy or dispenser may not take part (not registered, suspended, wrong party)."""

    def __init__(self, kind: str, party_id: str, reason: str) -> None:
        self.kind = kind
        self.party_id = party_id
        self.reason = reason
        super().__init__(f"{kind} {party_id}: {reason}")


class ValidityElapsed(RuleViolation):
    """The prescription's validity has passed (the validity rule of the catalogue)."""

    def __init__(self, rule_id: str, prescription_id: Any, valid_until: Any) -> None:
        super().__init__(
            rule_id,
            f"prescription {prescription_id} expired at {valid_until}",
            prescription_id=prescription_id,
            valid_until=valid_until,
        )
        self.prescription_id = str(prescription_id)
        self.valid_until = str(valid_until)


class IntegrityError(DomainError):
    """Events handed to a projector do not continue the aggregate (wrong id, version gap, chain break)."""


class NotFound(DomainError):
    kind = "aggregate"

    def __init__(self, key: Any) -> None:
        self.key = str(key)
        super().__init__(f"{self.kind} {key} not found")


class EncounterNotFound(NotFound):
    kind = "encounter"


class PrescriptionNotFound(NotFound):
    kind = "prescription"


class TraceCodeNotFound(NotFound):
    kind = "trace code"


class PhysicianNotFound(NotFound):
    kind = "physician"


class PharmacistNotFound(NotFound):
    kind = "pharmacist"


class PharmacyNotFound(NotFound):
    kind = "pharmacy"


class InstitutionNotFound(NotFound):
    kind = "institution"


class DeliveryEnterpriseNotFound(NotFound):
    kind = "delivery enterprise"


class PatientInsuranceNotFound(NotFound):
    kind = "patient insurance"


class EmergencyDeclarationsNotFound(NotFound):
    kind = "emergency declarations of region"


class DrugListingNotFound(NotFound):
    kind = "drug"


class ChronicDiseaseListNotFound(NotFound):
    kind = "chronic disease list of region"
