"""Who may send which command, and who may see which aggregate — one gate for HTTP and Kafka intake.

DOMAIN.md "Who may see what": a hospital sees its own visits and prescriptions; a pharmacy only prescriptions
routed to it; a pharmacist the prescriptions it may review (its employer's, or any if it is a qualified third
party); an agency the prescriptions of its pooling region; a regulator everything, read-only.

Something a party may not see is reported exactly like something that does not exist (``NotFound``), so
ids never leak. Sending a command outside the party's role is ``Forbidden``.

Shared by every entry point that takes commands from parties (the HTTP API and the Kafka intake): the gate,
``scoped_command_id`` (a party's idempotency keys live in its own namespace) and ``find_nul`` (input that
PostgreSQL could not store).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast
from uuid import UUID

from events.prescription import DispenserKind
from services.application import commands as c
from services.application.ports import EventStore
from services.application.unit_of_work import UnitOfWork
from services.domain.encounter import Encounter
from services.domain.errors import DomainError, EncounterNotFound, PrescriptionNotFound
from services.domain.prescription import Prescription
from services.domain.registries import Pharmacist


class PartyKind(StrEnum):
    HOSPITAL = "hospital"
    PHARMACY = "pharmacy"
    PHARMACIST = "pharmacist"
    AGENCY = "agency"
    REGULATOR = "regulator"


@dataclass(frozen=True)
class Party:
    """Who sends a command or asks to see something (an API key names one; so does an inbound topic)."""

    kind: PartyKind
    id: str
    key_id: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"


SELF_DISPENSE_COMMANDS: frozenset[type[c.Command]] = frozenset(
    {c.AcceptPrescription, c.DispensePrescription, c.WithdrawDispense, c.ReturnPacks, c.MarkCollected}
)
"""What a hospital sends on a prescription it routed to itself (it dispenses its own; 002 §三(六))."""
HOSPITAL_COMMANDS: frozenset[type[c.Command]] = frozenset(
    {c.RecordFollowUpVisit, c.IssuePrescription, c.CancelPrescription, c.RoutePrescription, c.ExtendValidity,
     *SELF_DISPENSE_COMMANDS}
)
PHARMACIST_COMMANDS: frozenset[type[c.Command]] = frozenset({c.ApprovePrescription, c.RejectPrescription})
PHARMACY_COMMANDS: frozenset[type[c.Command]] = frozenset(
    {
        c.AcceptPrescription,
        c.ReturnPrescription,
        c.DispensePrescription,
        c.WithdrawDispense,
        c.ReturnPacks,
        c.ArrangeDelivery,
        c.MarkDelivered,
        c.MarkCollected,
    }
)
AGENCY_COMMANDS: frozenset[type[c.Command]] = frozenset({
    c.RefuseFeesInAudit, c.ClawBackFees, c.RefuseConsultationFees, c.ClawBackConsultationFees, c.RetrySettlement,
    c.WriteOffSettlement, c.ReverseSettlement})
COMMANDS_BY_PARTY: dict[PartyKind, frozenset[type[c.Command]]] = {
    PartyKind.HOSPITAL: HOSPITAL_COMMANDS,
    PartyKind.PHARMACIST: PHARMACIST_COMMANDS,
    PartyKind.PHARMACY: PHARMACY_COMMANDS,
    PartyKind.AGENCY: AGENCY_COMMANDS | frozenset(c.REGISTRY_COMMANDS),
    PartyKind.REGULATOR: frozenset(c.REGULATOR_REGISTRY_COMMANDS),
}


class Forbidden(DomainError):
    """The party's role does not allow this operation (a pharmacy issuing a prescription, a regulator writing)."""

    def __init__(self, party: Party, what: str) -> None:
        self.party = str(party)
        self.what = what
        self.reason = f"{party.kind.value} may not {what}"
        super().__init__(self.reason)


class SenderMismatch(DomainError):
    """A command names a party other than its sender (Kafka intake: hospital_id differs from the topic's)."""

    def __init__(self, field: str, given: str, sender: str) -> None:
        self.ids = {field: given, "sender": sender}
        self.reason = f"{field} {given!r} is not the sender {sender!r}"
        super().__init__(self.reason)


class Gate:
    """Loads what a decision needs from the event store (the record of truth), never from a lagging projection."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    # --- loading ---------------------------------------------------------------------------------
    def _load(self, cls: type[Encounter | Prescription | Pharmacist], aggregate_id: UUID,
              unit: UnitOfWork | None = None) -> object:
        try:
            return (unit or UnitOfWork(self.store)).get(cls, aggregate_id)
        except DomainError:  # the id names an aggregate of another kind
            return None

    def prescription(self, party: Party, prescription_id: UUID, unit: UnitOfWork | None = None) -> Prescription:
        """The prescription if the party may see it; ``PrescriptionNotFound`` otherwise (whether or not it exists)."""
        rx = self._load(Prescription, prescription_id, unit)
        if not isinstance(rx, Prescription) or not self.may_see(party, rx, unit):
            raise PrescriptionNotFound(prescription_id)
        return rx

    def encounter(self, party: Party, encounter_id: UUID, unit: UnitOfWork | None = None) -> Encounter:
        enc = self._load(Encounter, encounter_id, unit)
        visible = isinstance(enc, Encounter) and (
            party.kind is PartyKind.REGULATOR
            or (party.kind is PartyKind.HOSPITAL and enc.hospital_id == party.id)
            or (party.kind is PartyKind.AGENCY and enc.pooling_region == party.id)
        )
        if not visible:
            raise EncounterNotFound(encounter_id)
        return cast(Encounter, enc)

    def pharmacist(self, party: Party, unit: UnitOfWork | None = None) -> Pharmacist | None:
        found = self._load(Pharmacist, Pharmacist.id_for(party.id), unit)
        return found if isinstance(found, Pharmacist) else None

    # --- decisions -------------------------------------------------------------------------------
    def may_see(self, party: Party, rx: Prescription, unit: UnitOfWork | None = None) -> bool:
        match party.kind:
            case PartyKind.REGULATOR:
                return True
            case PartyKind.HOSPITAL:
                return rx.hospital_id == party.id
            case PartyKind.PHARMACY:
                return rx.dispenser_kind is DispenserKind.PHARMACY and rx.dispenser_id == party.id
            case PartyKind.AGENCY:
                return rx.pooling_region == party.id
            case PartyKind.PHARMACIST:
                pharmacist = self.pharmacist(party, unit)
                return pharmacist is not None and rx.reviewable_by(pharmacist)  # R18
        return False

    def check(self, party: Party, command: c.Command, unit: UnitOfWork | None = None) -> None:
        """Raise ``Forbidden``, ``SenderMismatch`` or a ``NotFound`` unless ``party`` may send ``command``.

        ``unit``: read the aggregates from this unit (``RxTrail.unit_for(command)``, loaded in one round trip) and
        hand it to ``RxTrail.handle(command, unit=unit)``, so a request loads each aggregate once."""
        if type(command) not in COMMANDS_BY_PARTY[party.kind]:
            raise Forbidden(party, f"send {type(command).__name__}")
        if isinstance(command, c.RegistryCommand):  # the authority's own change: who sends it is who changed the fact
            if command.changed_by != str(party):
                raise SenderMismatch("changed_by", command.changed_by, str(party))
            return
        for field in ("hospital_id", "pharmacist_id", "dispenser_id"):
            given = getattr(command, field, None)
            if given is not None and given != party.id:
                raise SenderMismatch(field, given, party.id)
        if isinstance(command, c.IssuePrescription):
            self.encounter(party, command.encounter_id, unit)
        if isinstance(command, c.RefuseConsultationFees | c.ClawBackConsultationFees):
            self.encounter(party, command.encounter_id, unit)
        if isinstance(command, c.RetrySettlement | c.WriteOffSettlement | c.ReverseSettlement):
            if command.subject_kind.value == "prescription":
                self.prescription(party, command.subject_id, unit)
            else:
                self.encounter(party, command.subject_id, unit)
        prescription_id = getattr(command, "prescription_id", None)
        if isinstance(prescription_id, UUID):
            rx = self.prescription(party, prescription_id, unit)
            if (party.kind is PartyKind.HOSPITAL and type(command) in SELF_DISPENSE_COMMANDS
                    and not (rx.dispenser_kind is DispenserKind.HOSPITAL and rx.dispenser_id == party.id)):
                raise Forbidden(party, f"send {type(command).__name__} for a prescription it did not route to itself")


def scoped_command_id(party: Party, key: str | None) -> str | None:
    """Keys are per party, so one party can never read another's outcome by guessing its key."""
    return None if key is None else f"{party.kind.value}:{party.id}:{key}"


def find_nul(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where a NUL character hides in decoded JSON (PostgreSQL text and jsonb cannot store it), or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*path, key)
        if (found := find_nul(item, (*path, key))) is not None:
            return found
    return None
