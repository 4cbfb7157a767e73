"""Each stage's health in the database: who runs it, how often it was restarted, its last error, and its lag.

``rxtrail_stage_health`` (one row per stage, ``stage`` = the supervisor's child name: ``api``, ``relay``,
``router``, ``settlement``, ``gateway``, ``intake``, ``checkpoint``, ``expiry``, ``projection:<name>``) is written
by the supervisor (``services.infra.stack``: pid and start on every start, each exit as ``last_exit`` and
``last_error``) and by the stage itself (``ErrorRecorder``, installed by ``services.bootstrap.run_service``: its
own warnings and errors — the ones it survives — as ``last_error``). ``/health`` and ``rxtrail status`` read it
with ``stage_report``.

The lag is computed from the database alone, so it needs no broker and no running stage:

- the relay: stored events it has not published (``notification_id`` beyond its ``relay_position`` per event table);
- a consumer on ``rx.events`` (projection or worker, each owning a schema): events in the store minus the events it
  applied (the sum of its ``stream_versions``: versions are applied without holes, so an aggregate at version n
  had n events applied).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from services.adapters.event_log import discover_logs

if TYPE_CHECKING:
    from services.infra.settings import Settings

TABLE = "rxtrail_stage_health"
ERROR_MAX = 2000

_CREATE = (
    "CREATE TABLE IF NOT EXISTS rxtrail_stage_health ("
    " stage text PRIMARY KEY, pid int, started_at timestamptz, restarts int NOT NULL DEFAULT 0,"
    " last_error text, last_error_at timestamptz, last_exit text, last_exit_at timestamptz,"
    " updated_at timestamptz NOT NULL DEFAULT now())"
)


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rxtrail.stage_health.ddl'))")
        conn.execute(_CREATE)
        conn.execute("ALTER TABLE rxtrail_stage_health ADD COLUMN IF NOT EXISTS last_exit text, "
                     "ADD COLUMN IF NOT EXISTS last_exit_at timestamptz")


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def record_start(conn: psycopg.Connection[Any], stage: str, pid: int, restarts: int) -> None:
    """A stage (re)started as ``pid``; ``restarts``: how many times it was restarted in this stack's life."""
    conn.execute(
        "INSERT INTO rxtrail_stage_health (stage, pid, started_at, restarts, updated_at) VALUES (%s, %s, now(), %s, "
        "now()) ON CONFLICT (stage) DO UPDATE SET pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, "
        "restarts = EXCLUDED.restarts, updated_at = now()",
        (stage, pid, restarts),
    )


def record_error(conn: psycopg.Connection[Any], stage: str, error: str) -> None:
    """The stage's last error (one it survived, logged by the stage; or its exit)."""
    conn.execute(
        "INSERT INTO rxtrail_stage_health (stage, last_error, last_error_at, updated_at) VALUES (%s, %s, now(), now()) "
        "ON CONFLICT (stage) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = now(), updated_at = now()",
        (stage, error[:ERROR_MAX]),
    )


def record_exit(conn: psycopg.Connection[Any], stage: str, reason: str) -> None:
    """How the stage's process last ended (the supervisor saw it exit); also its last error."""
    conn.execute(
        "INSERT INTO rxtrail_stage_health (stage, last_error, last_error_at, last_exit, last_exit_at, updated_at) "
        "VALUES (%s, %s, now(), %s, now(), now()) ON CONFLICT (stage) DO UPDATE SET last_error = EXCLUDED.last_error, "
        "last_error_at = now(), last_exit = EXCLUDED.last_exit, last_exit_at = now(), updated_at = now()",
        (stage, reason[:ERROR_MAX], reason[:ERROR_MAX]),
    )


def clear(conn: psycopg.Connection[Any]) -> None:
    """Forget every stage (a new stack starts): restarts and errors are per stack life."""
    if _exists(conn, TABLE):
        conn.execute("DELETE FROM rxtrail_stage_health")


def consumer_stages(settings: Settings) -> dict[str, str]:
    """Stage name -> the PostgreSQL schema of each consumer on ``rx.events`` (projections and workers)."""
    from projections import registry

    stages = {f"projection:{n}": registry.get(n).schema for n in registry.NAMES}
    stages.update({"router": settings.router.schema_name, "settlement": settings.settlement.schema_name,
                   "gateway": settings.gateway.schema_name, "expiry": settings.expiry.schema_name})
    return stages


def shard_stores(settings: Settings) -> dict[str, str]:
    """The write side's other event stores (``settings.shards``: region -> database URL, one entry per database
    besides the main one, as ``services.bootstrap.shard_database_urls`` has them); each has its own relay."""
    main = settings.resolved_database_url()
    stores: dict[str, str] = {}
    for region, url in settings.shards.items():
        if url != main and url not in stores.values():
            stores[region] = url
    return stores


def relay_lag(conn: psycopg.Connection[Any], relay: str = "relay", schema: str = "public") -> int | None:
    """Stored events the relay has not published yet (None: no relay ever ran here)."""
    if not _exists(conn, "relay_position"):
        return None
    positions = {str(log): int(pos) for log, pos in conn.execute(
        "SELECT log, position FROM relay_position WHERE name = %s", (relay,)).fetchall()}
    if not positions:
        return None
    lag = 0
    for log in discover_logs(conn, schema):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{} WHERE notification_id > %s").format(
            sql.Identifier(schema), sql.Identifier(log)), (positions.get(log, 0),)).fetchone()
        lag += int(row[0]) if row else 0
    return lag


def stored_events(conn: psycopg.Connection[Any], schema: str = "public") -> int:
    total = 0
    for log in discover_logs(conn, schema):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                                       sql.Identifier(log))).fetchone()
        total += int(row[0]) if row else 0
    return total


def applied_events(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """Events a consumer applied (None: its schema does not exist yet)."""
    if not _exists(conn, f"{schema}.stream_versions"):
        return None
    row = conn.execute(sql.SQL("SELECT coalesce(sum(version), 0) FROM {}.stream_versions").format(
        sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0


def stage_rows(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    if not _exists(conn, TABLE):
        return {}
    rows = conn.execute("SELECT stage, pid, started_at, restarts, last_error, last_error_at, last_exit, last_exit_at, "
                        "updated_at FROM rxtrail_stage_health ORDER BY stage").fetchall()
    return {r[0]: {"pid": r[1], "started_at": _iso(r[2]), "restarts": int(r[3]), "last_error": r[4],
                   "last_error_at": _iso(r[5]), "last_exit": r[6], "last_exit_at": _iso(r[7]),
                   "updated_at": _iso(r[8])} for r in rows}


def stage_report(conn: psycopg.Connection[Any], consumers: Mapping[str, str], *, relay: str = "relay",
                 shards: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per stage: pid, started_at, restarts, last_error(_at) (an error it survived, or its exit), last_exit(_at)
    (how its process last ended), updated_at (what was recorded) and ``lag`` (events the stage has still to publish
    or apply; None when it cannot be told)."""
    report = stage_rows(conn)
    empty = {"pid": None, "started_at": None, "restarts": 0, "last_error": None, "last_error_at": None,
             "last_exit": None, "last_exit_at": None, "updated_at": None}
    store: int | None = stored_events(conn)
    relayed = relay_lag(conn, relay)
    for region, url in (shards or {}).items():  # sharded write side: every store and its relay count
        count: int | None = None
        lag: int | None = None
        try:
            with psycopg.connect(url, connect_timeout=2) as shard:
                count, lag = stored_events(shard), relay_lag(shard, f"{relay}-{region}")
        except psycopg.Error:  # a shard that does not answer: the lags cannot be told
            pass
        store = None if store is None or count is None else store + count
        relayed = None if relayed is None or lag is None else relayed + lag
    report.setdefault("relay", dict(empty))["lag"] = relayed
    for stage, schema in consumers.items():
        applied = applied_events(conn, schema)
        if applied is None and stage not in report:
            continue  # neither running nor ever run here
        behind = None if applied is None or store is None else max(0, store - applied)
        report.setdefault(stage, dict(empty))["lag"] = behind
    for entry in report.values():
        entry.setdefault("lag", None)
    return dict(sorted(report.items()))


class ErrorRecorder(logging.Handler):
    """A logging handler that records a stage's own warnings and errors (rxtrail's loggers only) as its
    ``last_error``: the errors it survives (a dead letter, a gap waiting for the record, a failed commit, a
    rebuilt view). Written from a thread of its own, the latest message at most every ``interval_s``; a database
    that does not answer costs the stage nothing (the message is dropped)."""

    SOURCES = ("services", "projections", "events", "rxtrail")

    def __init__(self, database_url: str, stage: str, *, interval_s: float = 2.0, level: int = logging.WARNING
                 ) -> None:
        super().__init__(level)
        self.database_url, self.stage, self.interval_s = database_url, stage, interval_s
        self._pending: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(self.SOURCES):
            return
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        except Exception:  # a bad log call must not break the stage
            return
        with self._lock:
            self._pending = text[:ERROR_MAX]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stage-errors", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        import time

        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                text, self._pending = self._pending, None
            if text is not None:
                self._record(text)
            time.sleep(self.interval_s)

    def _record(self, text: str) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
                ensure_table(self._conn)
            record_error(self._conn, self.stage, text)
        except psycopg.Error:
            self._conn = None

    def flush(self) -> None:
        """Write what is pending now (on the caller's thread)."""
        with self._lock:
            text, self._pending = self._pending, None
        if text is not None:
            self._record(text)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = ["TABLE", "ErrorRecorder", "applied_events", "clear", "consumer_stages", "ensure_table", "record_error",
           "record_exit", "record_start", "relay_lag", "shard_stores", "stage_report", "stage_rows", "stored_events"]
