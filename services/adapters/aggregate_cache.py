"""Aggregates this process has read or written, kept to skip re-reading and re-folding their streams.

Never stale past a command's own read: the cache is not a source of truth but a starting point. ``RxTrailStore.
load_many`` asks the event store, in the command's one load round trip, only for the events *after* the version it
holds (``originator_version > v``, by primary key), and folds those onto a copy; an aggregate another process changed
is brought up to date by that same read. Registry facts (physicians, institutions, drug listings, insurance, lists…)
are read by every command and change rarely, so most of their loads return no rows; the visit or prescription a
process just wrote is held too (written through on save), so the next command on it folds nothing.

Every aggregate goes in and out as a deep copy: a unit of work mutates what it loads (and may then be refused or lose
a race), and threads share this cache. Bounded (least recently used out first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from uuid import UUID

from services.domain.aggregate import Aggregate

DEFAULT_SIZE = 10_000


class AggregateCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._held: OrderedDict[UUID, tuple[int, Aggregate]] = OrderedDict()  # (version when kept, state)
        self._lock = threading.Lock()

    def held(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, Aggregate]:
        """The cached aggregates among ``aggregate_ids`` — shared, read-only: copy (``copy``) before changing."""
        found = {}
        with self._lock:
            for aggregate_id in aggregate_ids:
                entry = self._held.get(aggregate_id)
                if entry is None:
                    continue
                version, aggregate = entry
                if aggregate.version != version or aggregate._pending:  # changed since it was kept: not trusted
                    del self._held[aggregate_id]
                    continue
                found[aggregate_id] = aggregate
                self._held.move_to_end(aggregate_id)
        return found

    def peek(self, aggregate_id: UUID) -> Aggregate | None:
        """A cached aggregate, read-only (to plan which ids a command will read; never to act on)."""
        entry = self._held.get(aggregate_id)
        return None if entry is None else entry[1]

    @staticmethod
    def copy(aggregate: Aggregate) -> Aggregate:
        return aggregate.model_copy(deep=True)

    def keep(self, aggregates: Iterable[Aggregate], *, copy: bool = True) -> None:
        """Hold these committed states (no pending events), replacing older versions. ``copy=False``: the caller
        hands them over (an aggregate changed after all the same is dropped at its next ``held``: its version moved)."""
        kept = [self.copy(a) if copy else a for a in aggregates if not a._pending]
        with self._lock:
            for aggregate in kept:
                old = self._held.get(aggregate.id)
                if old is not None and old[0] > aggregate.version:
                    continue  # a newer state is already held
                self._held[aggregate.id] = (aggregate.version, aggregate)
                self._held.move_to_end(aggregate.id)
            while len(self._held) > self.size:
                self._held.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
