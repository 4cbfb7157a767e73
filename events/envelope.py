"""What travels with an event on ``rx.events``: the header names, the event id, and reading them back.

The relay builds the headers (``record_headers``); every consumer reads them with ``header``. An event's id is
derived from where it sits in its stream (``event_id``), so the relay, a replay from the event store and a
consumer that lost the header all agree on it, and dedupe and command keys match whichever path an event took.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

EVENT_ID = "event_id"
AGGREGATE_ID = "aggregate_id"
AGGREGATE_VERSION = "aggregate_version"
NOTIFICATION_ID = "notification_id"
"""Position in the event store's notification log (global order within one log)."""
EVENT_TYPE = "event_type"
SCHEMA_VERSION = "schema_version"
BUSINESS_TYPE = "business_type"
LOG = "log"
"""The event table the event was read from."""

Headers = Iterable[tuple[str, Any]] | None
"""Kafka headers as clients hand them over: (name, bytes) pairs; a value may be None or already text."""

EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:rxtrail:event")

_TYPE_NAME = re.compile(r"[^:.]+$")


def event_id(aggregate_id: uuid.UUID | str, version: int) -> str:
    """The id of a stored event: uuid5(EVENT_ID_NAMESPACE, "<aggregate id>/<version>"), the same on every path."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{aggregate_id}/{int(version)}"))


def event_type_of(topic: str) -> str:
    """An eventsourcing topic's event type: ``events.prescription:PrescriptionIssued`` → ``PrescriptionIssued``
    (nested classes: the last name)."""
    m = _TYPE_NAME.search(topic or "")
    return m.group(0) if m else ""


def header(headers: Headers, name: str) -> str | None:
    """The first header called ``name`` as text (invalid UTF-8 replaced), or None when absent."""
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)
    return None


def event_id_of(headers: Headers, aggregate_id: uuid.UUID | str, version: int) -> str:
    """The ``event_id`` header, or the derived id when a message lost it."""
    return header(headers, EVENT_ID) or event_id(aggregate_id, version)


def record_headers(notification_id: int, aggregate_id: str, version: int, topic: str, state: bytes,
                   log_name: str) -> list[tuple[str, bytes]]:
    """The headers the relay sends with a stored event (``topic``: its eventsourcing topic; ``state``: its JSON)."""
    try:
        doc = json.loads(state)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    schema_version = doc.get("schema_version")
    business_type = doc.get("business_type")
    return [
        (EVENT_ID, event_id(aggregate_id, version).encode()),
        (AGGREGATE_ID, aggregate_id.encode()),
        (AGGREGATE_VERSION, str(version).encode()),
        (NOTIFICATION_ID, str(notification_id).encode()),
        (EVENT_TYPE, event_type_of(topic).encode()),
        (SCHEMA_VERSION, ("" if schema_version is None else str(schema_version)).encode()),
        (BUSINESS_TYPE, ("" if business_type is None else str(business_type)).encode()),
        (LOG, log_name.encode()),
    ]


__all__ = [
    "AGGREGATE_ID",
    "AGGREGATE_VERSION",
    "BUSINESS_TYPE",
    "EVENT_ID",
    "EVENT_ID_NAMESPACE",
    "EVENT_TYPE",
    "LOG",
    "NOTIFICATION_ID",
    "SCHEMA_VERSION",
    "Headers",
    "event_id",
    "event_id_of",
    "event_type_of",
    "header",
    "record_headers",
]
