"""Messages rxtrail sends to parties and operators besides events: a pharmacy's feed (``rx.pharmacy.<id>``), a
refused inbound command (``rx.rejections``) and a dead letter (``rx.dlq``: the original message plus headers
saying who gave up on it and why)."""

from __future__ import annotations

import json
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from events.base import BusinessType, CatalogCategory, DrugCode, Money, PatientRef, UTCDateTime
from events.envelope import BUSINESS_TYPE, EVENT_ID, SCHEMA_VERSION, Headers
from events.prescription import PrescriptionIssued, RoutingBasis

# --- dead letters (rx.dlq) -----------------------------------------------------------------------------------

DLQ_ERROR = "dlq_error"
"""Why the message could not be handled."""
DLQ_SOURCE = "dlq_source"
"""Where it was read: ``topic/partition/offset`` (absent when it was never on a topic)."""
DLQ_CONSUMER = "dlq_consumer"
"""Who gave up on it: the consumer group or worker name."""


DLQ_SIZE = "dlq_size"
"""Set when the dead letter carries a reference instead of the value: the original value's size in bytes."""
DLQ_VALUE_MAX = 256 * 1024
"""A dead letter carries the original value up to this many bytes; a larger one (it may not fit a message at all)
is replaced by a reference: where it was read, its size, the error and its first bytes."""
DLQ_ERROR_MAX = 2_000
"""Characters of the error kept in a dead letter."""


def dead_letter_value(value: bytes | None, *, error: str, source: str | None,
                      limit: int = DLQ_VALUE_MAX) -> tuple[bytes, list[tuple[str, bytes]]]:
    """What a dead letter carries: the original value, or a JSON reference to it when it is larger than ``limit``
    (with the extra header ``dlq_size``)."""
    if value is None or len(value) <= limit:
        return value or b"", []
    reference = {"dead_letter": "reference", "source": source, "size": len(value), "error": error[:DLQ_ERROR_MAX],
                 "head": value[:512].decode(errors="replace")}
    return json.dumps(reference, ensure_ascii=False).encode(), [(DLQ_SIZE, str(len(value)).encode())]


def record_source(topic: str, partition: int, offset: int) -> str:
    """``topic/partition/offset``: where a message was read (dead letters, rejections, intake command keys)."""
    return f"{topic}/{partition}/{offset}"


def dead_letter_headers(original: Headers, *, error: str, consumer: str, source: str | None = None
                        ) -> list[tuple[str, bytes]]:
    """The original message's headers followed by the dead-letter ones."""
    headers = [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in original or () if v is not None]
    headers.append((DLQ_ERROR, error[:DLQ_ERROR_MAX].encode()))
    if source is not None:
        headers.append((DLQ_SOURCE, source.encode()))
    headers.append((DLQ_CONSUMER, consumer.encode()))
    return headers


def dead_letter_header_map(original: Headers, *, error: str, consumer: str, source: str | None = None
                           ) -> dict[str, str]:
    """``dead_letter_headers`` as text, for clients that take a mapping (faststream)."""
    return {k: v.decode(errors="replace")
            for k, v in dead_letter_headers(original, error=error, consumer=consumer, source=source)}


# --- rejections (rx.rejections) ------------------------------------------------------------------------------


class Rejection(BaseModel):
    """What ``rx.rejections`` carries (key: the sender's command_id, else the message key)."""

    model_config = ConfigDict(frozen=True)

    command_id: str | None = Field(description="the sender's reference, as sent")
    command_kind: str | None
    sender: str | None
    error: str = Field(description="RuleViolation, IllegalTransition, PrescriptionNotFound, ValidationError, ...")
    rule: str | None = Field(default=None, description="the rule's id when a rule refused the command")
    reason: str
    ids: dict[str, str] = Field(default_factory=dict)
    source: str = Field(description="topic/partition/offset of the refused message")


# --- pharmacy feeds (rx.pharmacy.<pharmacy_id>) ----------------------------------------------------------------

FEED_SCHEMA_VERSION = 1
FEED_MESSAGE_TYPE = "message_type"
FEED_PRESCRIPTION_ID = "prescription_id"
FEED_PHARMACY_ID = "pharmacy_id"

FeedMessageType = Literal["routed", "returned", "cancelled", "expired", "dispense_withdrawn"]


class FeedItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    name: str
    spec: str
    quantity: int
    days_supply: int
    unit_price: Money
    category: CatalogCategory


class FeedPrescription(BaseModel):
    """A prescription as its pharmacy sees it: dispensing details and the patient's pseudonym, nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prescription_id: UUID
    hospital_id: str
    business_type: BusinessType
    patient_ref: PatientRef
    diagnosis_code: str
    diagnosis_name: str
    items: tuple[FeedItem, ...]
    issued_at: UTCDateTime
    valid_until: UTCDateTime

    @classmethod
    def of(cls, event: PrescriptionIssued) -> FeedPrescription:
        return cls(
            prescription_id=event.originator_id, hospital_id=event.hospital_id, business_type=event.business_type,
            patient_ref=event.patient_ref, diagnosis_code=event.diagnosis_code, diagnosis_name=event.diagnosis_name,
            items=tuple(FeedItem(drug_code=i.drug_code, name=i.name, spec=i.spec, quantity=i.quantity,
                                 days_supply=i.days_supply, unit_price=i.unit_price, category=i.category)
                        for i in event.items),
            issued_at=event.timestamp, valid_until=event.valid_until,
        )


class FeedMessage(BaseModel):
    """One message on ``rx.pharmacy.<pharmacy_id>``; ``prescription`` is set on ``routed`` only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = FEED_SCHEMA_VERSION
    message_type: FeedMessageType
    event_id: str = Field(description="id of the triggering event; the same on every redelivery")
    pharmacy_id: str
    prescription_id: UUID
    business_type: BusinessType
    occurred_at: UTCDateTime
    basis: RoutingBasis | None = None
    prescription: FeedPrescription | None = None
    reason: str | None = None
    remainder_only: bool | None = None
    dispense_no: int | None = None


def feed_key(message: FeedMessage) -> bytes:
    """A feed message's Kafka key: the prescription id."""
    return str(message.prescription_id).encode()


def feed_headers(message: FeedMessage) -> list[tuple[str, bytes]]:
    """A feed message's Kafka headers (consumers dedupe on ``event_id``)."""
    m = message
    return [(EVENT_ID, m.event_id.encode()), (FEED_MESSAGE_TYPE, m.message_type.encode()),
            (FEED_PRESCRIPTION_ID, str(m.prescription_id).encode()), (FEED_PHARMACY_ID, m.pharmacy_id.encode()),
            (SCHEMA_VERSION, str(m.schema_version).encode()), (BUSINESS_TYPE, m.business_type.value.encode())]


__all__ = [
    "DLQ_CONSUMER",
    "DLQ_ERROR",
    "DLQ_SOURCE",
    "FEED_SCHEMA_VERSION",
    "FeedItem",
    "FeedMessage",
    "FeedMessageType",
    "FeedPrescription",
    "Rejection",
    "dead_letter_header_map",
    "dead_letter_headers",
    "dead_letter_value",
    "feed_headers",
    "feed_key",
    "record_source",
]


# --- what a party may read of an event (the trail, the pharmacy feed) ----------------------------------------

ENVELOPE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "schema_version", "prev_hash", "hash"})
_PRIVATE: dict[type[BaseModel], frozenset[str]] = {}


def private_fields(cls: type[BaseModel]) -> frozenset[str]:
    """Fields of an event class no party reads: the envelope and chain fields, and anything sealed (``*_sealed``)."""
    found = _PRIVATE.get(cls)
    if found is None:
        found = _PRIVATE[cls] = ENVELOPE_FIELDS | {name for name in cls.model_fields if name.endswith("_sealed")}
    return found


def public_fields(event: BaseModel) -> dict[str, Any]:
    """An event's business fields as JSON values (the one privacy filter for what parties read of events)."""
    return event.model_dump(mode="json", exclude=set(private_fields(type(event))))

