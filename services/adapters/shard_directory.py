"""The shard directory (``services.application.sharding.ShardDirectory``): which region shard holds an encounter or
a prescription, in ``rxtrail_shard_directory`` of the global database.

A row is written before the aggregate's first event (first writer wins, never changed), so every later command
finds the shard by id with one indexed read; a placement never changes, so each process caches what it read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from events.statement import PartyKind
from services.adapters.pool import CONNECT_TIMEOUT_S, POOL_TIMEOUT_S
from services.application.ports import PartyDirectory

TABLE = "rxtrail_shard_directory"
CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " aggregate_id uuid PRIMARY KEY,"
    " shard text NOT NULL,"
    " kind text NOT NULL,"
    " placed_at timestamptz NOT NULL DEFAULT now())"
)
_PLACE = (
    f"WITH placed AS (INSERT INTO {TABLE} (aggregate_id, shard, kind) VALUES (%s, %s, %s)"
    " ON CONFLICT (aggregate_id) DO NOTHING RETURNING shard) "
    f"SELECT shard FROM placed UNION ALL SELECT shard FROM {TABLE} WHERE aggregate_id = %s LIMIT 1"
)
_SHARD_OF = f"SELECT shard FROM {TABLE} WHERE aggregate_id = %s"


class PostgresShardDirectory:
    """Placements in the global database through a small pool; an in-process cache of the (immutable) rows."""

    def __init__(self, database_url: str, *, max_connections: int = 4, cache_size: int = 200_000) -> None:
        self._pool = ConnectionPool(database_url, min_size=1, max_size=max_connections, timeout=POOL_TIMEOUT_S,
                                    check=ConnectionPool.check_connection, open=True, name="shard-directory",
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S})
        with self._pool.connection() as conn:
            conn.execute(CREATE)
        self._cache: dict[UUID, str] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _remember(self, aggregate_id: UUID, shard: str) -> str:
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[aggregate_id] = shard
        return shard

    def shard_of(self, aggregate_id: UUID) -> str | None:
        if (known := self._cache.get(aggregate_id)) is not None:
            return known
        with self._pool.connection() as conn:
            row = conn.execute(_SHARD_OF, (aggregate_id,)).fetchone()
        return None if row is None else self._remember(aggregate_id, str(row[0]))

    def place(self, aggregate_id: UUID, shard: str, kind: str) -> str:
        if (known := self._cache.get(aggregate_id)) is not None:
            return known
        with self._pool.connection() as conn:
            row = conn.execute(_PLACE, (aggregate_id, shard, kind, aggregate_id)).fetchone()
            if row is None:  # the statement's snapshot missed a concurrent winner: read it now
                row = conn.execute(_SHARD_OF, (aggregate_id,)).fetchone()
        if row is None:
            raise RuntimeError(f"shard directory: no placement for {aggregate_id}")
        return self._remember(aggregate_id, str(row[0]))

    def placements(self) -> dict[UUID, str]:
        """Every placement (for checks and tests)."""
        with self._pool.connection() as conn:
            return {UUID(str(r[0])): str(r[1]) for r in conn.execute(f"SELECT aggregate_id, shard FROM {TABLE}")}

    def close(self) -> None:
        self._pool.close()


class PartyRegionsAcrossStores:
    """``services.application.ports.PartyDirectory`` over several event stores (statements with region shards): a
    hospital's region comes from its visits, which live in the region shards; pharmacies' from the global store."""

    def __init__(self, directories: Sequence[PartyDirectory]) -> None:
        self.directories = list(directories)

    def regions(self, parties: Iterable[tuple[PartyKind, str]]) -> dict[tuple[PartyKind, str], str]:
        wanted = list(dict.fromkeys(parties))
        found: dict[tuple[PartyKind, str], str] = {}
        for directory in self.directories:
            missing = [p for p in wanted if p not in found]
            if not missing:
                break
            found.update(directory.regions(missing))
        return found


_HELD = (
    "SELECT e.originator_id, (convert_from(e.state, 'UTF8')::jsonb ->> 'prescription_id')::uuid"
    " FROM rxtrail_events e JOIN (SELECT originator_id, max(originator_version) AS v FROM rxtrail_events"
    "  WHERE topic LIKE 'events.trace_code:%%' GROUP BY originator_id) h"
    " ON h.originator_id = e.originator_id AND h.v = e.originator_version"
    " WHERE e.topic = 'events.trace_code:TraceCodeSold'"
    " AND convert_from(e.state, 'UTF8')::jsonb ->> 'prescription_id' IS NOT NULL"
    " AND (convert_from(e.state, 'UTF8')::jsonb ->> 'timestamp')::timestamptz < %s"
    " AND (convert_from(e.state, 'UTF8')::jsonb ->> 'timestamp')::timestamptz >= %s"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def held_for_prescriptions(database_url: str, sold_before: datetime, sold_after: datetime | None = None
                           ) -> list[tuple[UUID, UUID]]:
    """(trace-code stream id, prescription id) of every code in the global store whose last event is a sale for a
    prescription made before ``sold_before`` (and at or after ``sold_after``, when given) — the candidates of
    ``ShardRouter.release_stranded`` (a scan of the trace-code streams in the database: a repair job, not a hot
    path; the window bounds the prescriptions it loads)."""
    with psycopg.connect(database_url) as conn:
        return [(UUID(str(r[0])), UUID(str(r[1])))
                for r in conn.execute(_HELD, (sold_before, sold_after or _EPOCH)).fetchall()]
