"""The expiry worker's state in PostgreSQL (schema ``expiry``), written by the worker (``services.workers.expiry``):
one row per issued prescription with its ``valid_until``, ``open`` while it can still expire, and the number of
refused attempts (the suffix of the next command key). The fold writes it in the consumer loop's transaction; a
sweep reads what is due and closes it in a transaction of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

SCHEMA = "expiry"


@dataclass(frozen=True)
class Due:
    """An open prescription past its validity, as a sweep found it."""

    prescription_id: UUID
    valid_until: datetime
    attempts: int


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, "
        "valid_until timestamptz NOT NULL, open boolean NOT NULL, attempts int NOT NULL DEFAULT 0)").format(s))
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS prescriptions_due ON {}.prescriptions (valid_until) WHERE open").format(s))


def record(conn: psycopg.Connection[Any], schema: str, issued: Mapping[UUID, datetime], opened: Mapping[UUID, bool]
           ) -> None:
    """New prescriptions with their validity (open), then whether each touched one is open now."""
    s = sql.Identifier(schema)
    with conn.cursor() as cur:
        if issued:
            cur.executemany(sql.SQL(
                "INSERT INTO {}.prescriptions (prescription_id, valid_until, open) VALUES (%s, %s, true) "
                "ON CONFLICT (prescription_id) DO UPDATE SET valid_until = EXCLUDED.valid_until").format(s),
                [(k, issued[k]) for k in sorted(issued)])
        if opened:
            cur.executemany(sql.SQL("UPDATE {}.prescriptions SET open = %s WHERE prescription_id = %s").format(s),
                            [(opened[k], k) for k in sorted(opened)])


def due(conn: psycopg.Connection[Any], schema: str, before: datetime, limit: int) -> list[Due]:
    """Open prescriptions whose validity ended before ``before``, oldest first."""
    rows = conn.execute(sql.SQL(
        "SELECT prescription_id, valid_until, attempts FROM {}.prescriptions WHERE open AND valid_until < %s "
        "ORDER BY valid_until, prescription_id LIMIT %s").format(sql.Identifier(schema)), (before, limit)).fetchall()
    return [Due(r[0], r[1], r[2]) for r in rows]


def settle(conn: psycopg.Connection[Any], schema: str, *, retried: Sequence[UUID], closed: Sequence[UUID]) -> None:
    """After a sweep: one more attempt on ``retried`` (their next key), ``closed`` no longer open."""
    s = sql.Identifier(schema)
    with conn.cursor() as cur:
        if retried:
            cur.executemany(sql.SQL("UPDATE {}.prescriptions SET attempts = attempts + 1 WHERE prescription_id = %s")
                            .format(s), [(k,) for k in sorted(retried)])
        if closed:
            cur.executemany(sql.SQL("UPDATE {}.prescriptions SET open = false WHERE prescription_id = %s").format(s),
                            [(k,) for k in sorted(closed)])
