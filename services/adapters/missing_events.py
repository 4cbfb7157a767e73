"""The record behind the topic: the consumers' ``projections.base.MissingEvents``, read from the event store.

A consumer that receives version n+2 of an aggregate before n+1 (a broker that lost data, a republish landing
behind an in-flight batch) reads the missing versions here and applies them first; it never skips them
(``projections.base``, "Consumers that cannot skip"). The composition root gives every consumer one.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import psycopg

from projections.base import Delivered, decode_stored_or_tombstone
from services.adapters.event_log import discover_logs, read_versions


class StoreEvents:
    """``MissingEvents`` on the event store's tables (every ``*_events`` log of ``schema``), over one lazily
    opened autocommit connection (reopened after a failure). Thread-safe: one read at a time."""

    def __init__(self, database_url: str, schema: str = "public") -> None:
        self.database_url = database_url
        self.schema = schema
        self._conn: psycopg.Connection[Any] | None = None
        self._logs: list[str] = []
        self._lock = threading.Lock()

    def read(self, aggregate_id: UUID, after_version: int, before_version: int) -> list[Delivered]:
        with self._lock:
            try:
                return self._read(aggregate_id, after_version, before_version)
            except psycopg.OperationalError:
                self._drop()
                return self._read(aggregate_id, after_version, before_version)

    def _read(self, aggregate_id: UUID, after: int, before: int) -> list[Delivered]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
            self._logs = []
        if not self._logs:
            self._logs = discover_logs(self._conn, self.schema)
        for log in self._logs:
            rows = read_versions(self._conn, log, aggregate_id, after, before, self.schema)
            if rows:
                return [decode_stored_or_tombstone(*row) for row in rows]  # a bad one must not stop the reader
        self._logs = []  # a log created since (a new application) is found on the next read
        return []

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
