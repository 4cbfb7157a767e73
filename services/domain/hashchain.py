"""Verify hash chains: every event's hash recomputed, every prev_hash linked to its predecessor.

The pure check on decoded events. ``services.integrity.chain.check_stream`` runs it, with the same rule on the
stored JSON, over the event store, ``rx.events`` and trail bundles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from events.base import GENESIS_HASH, DomainEvent, event_hash


@dataclass(frozen=True)
class BrokenLink:
    aggregate_id: UUID
    version: int
    reason: str


def verify_stream(
    events: Iterable[DomainEvent], *, start_hashes: dict[UUID, tuple[int, str]] | None = None
) -> BrokenLink | None:
    """Return the first broken link, or None if every chain holds.

    Events may interleave several aggregates (e.g. the notification log) but each aggregate's events must
    come in version order. A chain that starts above version 1 is trusted at its first link unless
    ``start_hashes`` gives ``{aggregate_id: (version, hash)}`` of the event just before.
    """
    heads: dict[UUID, tuple[int, str]] = dict(start_hashes or {})
    for event in events:
        aid, version = event.originator_id, event.originator_version
        if event_hash(event) != event.hash:
            return BrokenLink(aid, version, "hash does not match the event's content")
        head = heads.get(aid)
        if head is None:
            if version == 1 and event.prev_hash != GENESIS_HASH:
                return BrokenLink(aid, version, "first event does not start from the genesis hash")
        else:
            last_version, last_hash = head
            if version != last_version + 1:
                return BrokenLink(aid, version, f"version {version} follows {last_version}")
            if event.prev_hash != last_hash:
                return BrokenLink(aid, version, f"prev_hash does not link to version {last_version}")
        heads[aid] = (version, event.hash)
    return None
