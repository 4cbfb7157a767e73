"""The one reader of the event log: eventsourcing's event tables (``rxtrail_events``; any ``*_events`` table with a
``notification_id`` is a log) read as stored rows, for verification, checkpoints, bundles, replay and the relay.

Rows come back as they are stored (``LoggedEvent``: the JSON bytes untouched), because integrity checks hash
exactly those bytes. ``load_stream`` is the one decoded read: an aggregate's events through the application's
mapper, upcast to current schemas. Notification ids may have gaps (rolled-back saves): reads always ask for
ids *greater than* a position, never for a count of rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import MapperDeserialisationError
from psycopg.sql import SQL, Composed, Identifier

from events.base import DomainEvent
from services.adapters.store import RxTrailStore

_LOGS = (
    "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
    " AND column_name = 'notification_id' AND table_name LIKE %s ORDER BY table_name"
)
_LOG_NAME_PATTERN = "%\\_events"
_COLUMNS = "notification_id, originator_id::text, originator_version, topic, state"
_AFTER = SQL("SELECT " + _COLUMNS + " FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s")
_RANGE = SQL("SELECT " + _COLUMNS + " FROM {} WHERE notification_id > %s AND notification_id <= %s"
             " ORDER BY notification_id")
_BY_STREAM = SQL("SELECT " + _COLUMNS + " FROM {} ORDER BY originator_id, originator_version")
_ONE_STREAM = SQL("SELECT " + _COLUMNS + " FROM {} WHERE originator_id::text = %s ORDER BY originator_version")
_VERSIONS = SQL("SELECT " + _COLUMNS + " FROM {} WHERE originator_id = %s AND originator_version > %s"
                " AND originator_version < %s ORDER BY originator_version")
_COUNT = SQL("SELECT count(*) FROM {}")
_ITERSIZE = 5000


class LoggedEvent(NamedTuple):
    """One stored event as the log holds it."""

    notification_id: int
    aggregate_id: str
    version: int
    topic: str
    """eventsourcing's topic, ``events.prescription:PrescriptionIssued``."""
    state: bytes
    """The stored JSON, byte for byte."""


def _row(row: Sequence[Any]) -> LoggedEvent:
    n, a, v, t, s = row
    return LoggedEvent(int(n), str(a), int(v), str(t), bytes(s))


def _table(query: SQL, schema: str, log: str) -> Composed:
    return query.format(Identifier(schema, log))


# --- which logs ---------------------------------------------------------------------------------------------------


def discover_logs(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    """Every event table in ``schema``: a ``*_events`` table with a ``notification_id`` column."""
    return [r[0] for r in conn.execute(_LOGS, (schema, _LOG_NAME_PATTERN)).fetchall()]


async def discover_logs_async(conn: psycopg.AsyncConnection[Any], schema: str = "public") -> list[str]:
    cur = await conn.execute(_LOGS, (schema, _LOG_NAME_PATTERN))
    return [r[0] for r in await cur.fetchall()]


def count_events(conn: psycopg.Connection[Any], log: str, schema: str = "public") -> int:
    row = conn.execute(_table(_COUNT, schema, log)).fetchone()
    return int(row[0]) if row else 0


# --- in log order -------------------------------------------------------------------------------------------------


def read_after(conn: psycopg.Connection[Any], log: str, after: int, limit: int, schema: str = "public"
               ) -> list[LoggedEvent]:
    """Up to ``limit`` events after notification id ``after``, in log order."""
    return [_row(r) for r in conn.execute(_table(_AFTER, schema, log), (after, limit), prepare=True).fetchall()]


async def read_after_async(conn: psycopg.AsyncConnection[Any], log: str, after: int, limit: int,
                           schema: str = "public") -> list[LoggedEvent]:
    """``read_after`` on an async connection (the relay's loop); the statement is prepared once per connection."""
    cur = await conn.execute(_table(_AFTER, schema, log), (after, limit), prepare=True)
    return [_row(r) for r in await cur.fetchall()]


def pages(conn: psycopg.Connection[Any], log: str, page_size: int, *, after: int = 0, schema: str = "public"
          ) -> Iterator[list[LoggedEvent]]:
    """The log after ``after`` in pages of up to ``page_size`` events (each page one query)."""
    while True:
        page = read_after(conn, log, after, page_size, schema)
        if not page:
            return
        yield page
        after = page[-1].notification_id


def iter_log(conn: psycopg.Connection[Any], log: str, after: int = 0, upto: int | None = None,
             schema: str = "public") -> Iterator[LoggedEvent]:
    """Events with ``after < notification id <= upto``, in log order, streamed through a server-side cursor
    (the caller's transaction must stay open while it iterates)."""
    with conn.cursor(name=f"iter_{log}") as cur:
        cur.itersize = _ITERSIZE
        cur.execute(_table(_RANGE, schema, log), (after, upto if upto is not None else 2**62))
        for row in cur:
            yield _row(row)


# --- by stream ----------------------------------------------------------------------------------------------------


def iter_streams(conn: psycopg.Connection[Any], log: str, schema: str = "public"
                 ) -> Iterator[tuple[str, list[LoggedEvent]]]:
    """Every aggregate's stream in version order, one aggregate at a time, streamed."""
    current: str | None = None
    rows: list[LoggedEvent] = []
    with conn.cursor(name=f"streams_{log}") as cur:
        cur.itersize = _ITERSIZE
        cur.execute(_table(_BY_STREAM, schema, log))
        for raw in cur:
            row = _row(raw)
            if row.aggregate_id != current:
                if current is not None:
                    yield current, rows
                current, rows = row.aggregate_id, []
            rows.append(row)
    if current is not None:
        yield current, rows


def read_stream(conn: psycopg.Connection[Any], log: str, aggregate_id: UUID | str, schema: str = "public"
                ) -> list[LoggedEvent]:
    """One aggregate's stored events in version order (empty when the log holds none)."""
    return [_row(r) for r in conn.execute(_table(_ONE_STREAM, schema, log), (str(aggregate_id),)).fetchall()]


def read_versions(conn: psycopg.Connection[Any], log: str, aggregate_id: UUID, after: int, before: int,
                  schema: str = "public") -> list[LoggedEvent]:
    """One aggregate's stored events with ``after < version < before``, in version order (the consumers read
    versions the topic did not deliver through this; one index lookup)."""
    return [_row(r) for r in conn.execute(_table(_VERSIONS, schema, log), (aggregate_id, after, before),
                                          prepare=True).fetchall()]


def find_stream(conn: psycopg.Connection[Any], aggregate_id: UUID | str, logs: Sequence[str] | None = None,
                schema: str = "public") -> tuple[str, list[LoggedEvent]] | None:
    """The first log holding the aggregate, and its events there; None when no log does."""
    for log in list(logs) if logs is not None else discover_logs(conn, schema):
        rows = read_stream(conn, log, aggregate_id, schema)
        if rows:
            return log, rows
    return None


# --- through the application's store ------------------------------------------------------------------------------


def stored_stream(store: RxTrailStore, aggregate_id: UUID) -> list[tuple[int, str, bytes]]:
    """One aggregate's stored events as (version, topic, JSON bytes), read through the store's own recorder."""
    return [(e.originator_version, e.topic, e.state) for e in store.recorder.select_events(aggregate_id)]


def load_stream(store: RxTrailStore, aggregate_id: UUID) -> list[DomainEvent]:
    """Every stored event of one aggregate, in version order, upcast to current schemas."""
    return [_as_event(e) for e in store.events.get(aggregate_id)]


def _as_event(event: Any) -> DomainEvent:
    if not isinstance(event, DomainEvent):
        raise MapperDeserialisationError(f"{type(event).__name__} is not a hash-chained event")
    return event
