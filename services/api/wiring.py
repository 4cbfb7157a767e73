"""Building the write side and the read pool from Settings (shared by the API and the Kafka intake)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool

from services.adapters import api_keys as keys
from services.infra.settings import Settings


def build_application(settings: Settings, **kwargs: Any) -> Any:
    from services.application import build_application as build

    return build(settings.resolved_database_url(), pseudonym_secret=settings.resolved_pseudonym_secret(), **kwargs)


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(database_url, min_size=min_size, max_size=max_size, open=True,
                                               kwargs={"autocommit": True})
    with pool.connection() as conn:
        keys.ensure_schema(conn)
    return pool
