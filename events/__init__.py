"""The rxtrail event catalogue: frozen pydantic v2 models, one module per stream. Imports nothing of ours."""

from __future__ import annotations

from events.base import (
    GENESIS_HASH,
    BusinessType,
    DomainEvent,
    Envelope,
    Money,
    Snapshot,
    canonical_bytes,
    event_hash,
    register_upcaster,
    to_money,
    upcast,
)
from events.codec import (
    EVENT_TYPES,
    UnknownEventType,
    from_json,
    json_schema,
    to_json,
    type_name,
    write_schemas,
)

__all__ = [
    "EVENT_TYPES",
    "GENESIS_HASH",
    "BusinessType",
    "DomainEvent",
    "Envelope",
    "Money",
    "Snapshot",
    "UnknownEventType",
    "canonical_bytes",
    "event_hash",
    "from_json",
    "json_schema",
    "register_upcaster",
    "to_json",
    "to_money",
    "type_name",
    "upcast",
    "write_schemas",
]
