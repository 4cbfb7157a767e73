"""The gateway's state in PostgreSQL (schema ``gateway``), written by the gateway worker
(``services.workers.gateway``) in its consumer loop's transaction and read by the API's pharmacy feed:

- ``prescriptions``: each prescription's dispensing details as its pharmacy sees them (``FeedPrescription``)
  and the pharmacy it is routed to now;
- ``published``: the feed messages published, by triggering event id (never published twice);
- ``feed``: every event of a prescription while it is a pharmacy's (its routing, what follows, its own return),
  through ``events.contracts.public_fields``, with a ``seq`` cursor — what ``GET /pharmacy/feed`` serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from events.contracts import FeedPrescription

SCHEMA = "gateway"


@dataclass
class FedPrescription:
    """A prescription as the gateway keeps it: what its pharmacy sees, and that pharmacy (None: nobody's now)."""

    details: FeedPrescription
    pharmacy_id: str | None = None


@dataclass(frozen=True)
class FeedRow:
    """One event of a prescription on its pharmacy's feed."""

    pharmacy_id: str
    prescription_id: UUID
    version: int
    event_id: str
    event_type: str
    at: datetime
    data: Mapping[str, Any]
    prescription: FeedPrescription | None = None


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, "
                         "details jsonb NOT NULL, pharmacy_id text)").format(s))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.published (event_id text PRIMARY KEY, "
                         "topic text NOT NULL, message_type text NOT NULL, "
                         "published_at timestamptz NOT NULL DEFAULT now())").format(s))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.feed (pharmacy_id text, prescription_id uuid, version int, "
                         "event_id text NOT NULL, event_type text NOT NULL, at timestamptz NOT NULL, "
                         "data jsonb NOT NULL, prescription jsonb, seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, "
                         "PRIMARY KEY (pharmacy_id, prescription_id, version))").format(s))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS feed_pharmacy ON {}.feed (pharmacy_id, seq)").format(s))


def load(conn: psycopg.Connection[Any], schema: str, ids: Iterable[UUID]) -> dict[UUID, FedPrescription]:
    rows = conn.execute(sql.SQL("SELECT prescription_id, details, pharmacy_id FROM {}.prescriptions "
                                "WHERE prescription_id = ANY(%s)").format(sql.Identifier(schema)),
                        (list(ids),)).fetchall()
    return {r[0]: FedPrescription(FeedPrescription.model_validate(r[1]), r[2]) for r in rows}


def save(conn: psycopg.Connection[Any], schema: str, rows: Mapping[UUID, FedPrescription]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {}.prescriptions (prescription_id, details, pharmacy_id) VALUES (%s, %s, %s) "
                    "ON CONFLICT (prescription_id) DO UPDATE SET pharmacy_id = EXCLUDED.pharmacy_id")
            .format(sql.Identifier(schema)),
            [(k, json.dumps(rx.details.model_dump(mode="json")), rx.pharmacy_id) for k, rx in rows.items()])


def published(conn: psycopg.Connection[Any], schema: str, event_ids: Sequence[str]) -> set[str]:
    """Which of these triggering events already have their feed message published."""
    if not event_ids:
        return set()
    rows = conn.execute(sql.SQL("SELECT event_id FROM {}.published WHERE event_id = ANY(%s)")
                        .format(sql.Identifier(schema)), (list(event_ids),)).fetchall()
    return {r[0] for r in rows}


def record_published(conn: psycopg.Connection[Any], schema: str, rows: Sequence[tuple[str, str, str]]) -> None:
    """``(event_id, topic, message_type)`` of messages the broker acknowledged."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {}.published (event_id, topic, message_type) VALUES (%s, %s, %s) "
                                "ON CONFLICT (event_id) DO NOTHING").format(sql.Identifier(schema)), rows)


def append_feed(conn: psycopg.Connection[Any], schema: str, rows: Sequence[FeedRow]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(sql.SQL(
            "INSERT INTO {}.feed (pharmacy_id, prescription_id, version, event_id, event_type, at, data, "
            "prescription) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
            .format(sql.Identifier(schema)),
            [(r.pharmacy_id, r.prescription_id, r.version, r.event_id, r.event_type, r.at, json.dumps(r.data),
              None if r.prescription is None else r.prescription.model_dump_json()) for r in rows])


def feed_page(conn: psycopg.Connection[Any], schema: str, pharmacy_id: str, after: int, limit: int
              ) -> list[dict[str, Any]]:
    """The pharmacy's feed as HTTP serves it: every event of a prescription while it is routed to this pharmacy
    (its routing, what follows, its own return), after the cursor ``after`` (the ``seq`` of a row), oldest first;
    ``data`` through ``events.contracts.public_fields``, ``prescription`` (on a routing) a ``FeedPrescription`` —
    the same filters as the Kafka feed."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT seq, prescription_id, version, event_type, at, data, prescription FROM {}.feed "
                            "WHERE pharmacy_id = %s AND seq > %s ORDER BY seq LIMIT %s").format(sql.Identifier(schema)),
                    (pharmacy_id, after, limit))
        return cur.fetchall()
