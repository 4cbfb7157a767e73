"""The read pool: PostgreSQL connections (autocommit) for API keys, the regulator query record and the read side."""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool

from services.adapters import api_keys as keys


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(database_url, min_size=min_size, max_size=max_size, open=True,
                                               kwargs={"autocommit": True})
    with pool.connection() as conn:
        keys.ensure_schema(conn)
    return pool
