"""The read pool: PostgreSQL connections (autocommit) for API keys, the regulator query record and the read side.

While PostgreSQL is down or restarting, nothing waits long: a request waits at most ``POOL_TIMEOUT_S`` for a
connection (``psycopg_pool.PoolTimeout``, which the API answers 503 with ``Retry-After``), a connection attempt at
most ``CONNECT_TIMEOUT_S``; a connection broken by a restart is found by a check when it is handed out (one empty
round trip) and replaced, so the first requests after PostgreSQL is back are answered, not failed.
"""

from __future__ import annotations

from typing import Any

import eventsourcing.persistence as es
import psycopg
from psycopg_pool import ConnectionPool

from services.adapters import api_keys as keys

POOL_TIMEOUT_S = 1.5
CONNECT_TIMEOUT_S = 5

DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # connection refused or lost, server shutting down or starting up; PoolTimeout,
    psycopg.InterfaceError,    # TooManyRequests (psycopg_pool's are subclasses); a connection already closed
    es.OperationalError,       # the same, raised through eventsourcing's datastore (the event store)
    es.InterfaceError,
)
"""What the database being down or restarting raises through the read pool, the patient-key pool or the event
store: transient, so a caller may answer "try again" (the API: 503 with ``Retry-After``). A command that failed
this way wrote nothing: its events and outcome are saved in one transaction."""


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10,
              timeout: float = POOL_TIMEOUT_S) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(database_url, min_size=min_size, max_size=max_size, open=True,
                                               timeout=timeout, check=ConnectionPool.check_connection,
                                               kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S})
    with pool.connection() as conn:
        keys.ensure_schema(conn)
    return pool


def database_answers(database_url: str, timeout_s: int = 1) -> bool:
    """Whether PostgreSQL answers a fresh connection now (not through a pool: its broken connections and
    reconnection backoff say nothing about the server)."""
    try:
        with psycopg.connect(database_url, connect_timeout=timeout_s, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True
