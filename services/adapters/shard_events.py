"""The record behind the topic when the write side is sharded: ``projections.base.MissingEvents`` over every event
store (the global one and each region's). An aggregate lives in exactly one of them, so the first store that
holds the missing versions is the one (``services.adapters.missing_events.StoreEvents`` per store)."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from projections.base import Delivered
from services.adapters.missing_events import StoreEvents


class ShardedStoreEvents:
    """``MissingEvents`` over several event stores (the global store first: registries and trace codes)."""

    def __init__(self, database_urls: Iterable[str], schema: str = "public") -> None:
        self.readers = [StoreEvents(url, schema) for url in dict.fromkeys(database_urls)]

    def read(self, aggregate_id: UUID, after_version: int, before_version: int) -> list[Delivered]:
        for reader in self.readers:
            if found := reader.read(aggregate_id, after_version, before_version):
                return found
        return []

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
