"""Reading the record: one aggregate's full stream (verification, export) and hash-chain checks.

``verify_all`` walks the notification log in global order (``select_notifications(start, limit,
inclusive_of_start=False)``, so gaps left by rolled-back saves are harmless), groups events by aggregate and
checks each chain from its first event; it reports every broken aggregate, not only the first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from events.base import DomainEvent
from services.adapters.store import RxTrailStore
from services.domain.hashchain import BrokenLink, verify_stream


def load_stream(store: RxTrailStore, aggregate_id: UUID) -> list[DomainEvent]:
    """Every stored event of one aggregate, in version order, upcast to current schemas."""
    return [_as_event(e) for e in store.events.get(aggregate_id)]


def verify_aggregate(store: RxTrailStore, aggregate_id: UUID) -> BrokenLink | None:
    """The first broken link of one aggregate's chain, or None. An unreadable event counts as broken."""
    link: BrokenLink | None = None
    try:
        events = load_stream(store, aggregate_id)
    except MapperDeserialisationError as exc:
        return BrokenLink(aggregate_id, 0, f"unreadable stored event: {exc}")
    if events:
        link = verify_stream(events)
    return link


@dataclass
class VerificationReport:
    events: int = 0
    aggregates: int = 0
    last_notification_id: int | None = None
    broken: list[BrokenLink] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken


def verify_all(store: RxTrailStore, *, page_size: int = 5000, after: int | None = None) -> VerificationReport:
    """Check every aggregate's chain across the whole notification log (or from ``after``)."""
    recorder: Any = store.recorder
    report = VerificationReport(last_notification_id=after)
    heads: dict[UUID, tuple[int, str]] = {}
    broken: set[UUID] = set()
    position = after
    while True:
        page = recorder.select_notifications(position, page_size, inclusive_of_start=False)
        if not page:
            break
        by_aggregate: dict[UUID, list[DomainEvent]] = defaultdict(list)
        for notification in page:
            aggregate_id = _uuid(notification.originator_id)
            report.events += 1
            if aggregate_id in broken:
                continue
            try:
                event = _as_event(store.mapper.to_domain_event(_stored(notification)))
            except MapperDeserialisationError as exc:
                broken.add(aggregate_id)
                report.broken.append(
                    BrokenLink(aggregate_id, notification.originator_version, f"unreadable stored event: {exc}")
                )
                by_aggregate.pop(aggregate_id, None)
                continue
            by_aggregate[aggregate_id].append(event)
        for aggregate_id, events in by_aggregate.items():
            if aggregate_id in broken:
                continue
            start = {aggregate_id: heads[aggregate_id]} if aggregate_id in heads else None
            if start is None and after is None and events[0].originator_version != 1:
                link: BrokenLink | None = BrokenLink(
                    aggregate_id, events[0].originator_version, "stream does not start at version 1"
                )
            else:
                link = verify_stream(events, start_hashes=start)
            if link is not None:
                broken.add(aggregate_id)
                report.broken.append(link)
                continue
            heads[aggregate_id] = (events[-1].originator_version, events[-1].hash)
        position = page[-1].id
        report.last_notification_id = position
    report.aggregates = len(heads) + len(broken)
    return report


def _stored(notification: Any) -> StoredEvent:
    return StoredEvent(
        originator_id=notification.originator_id,
        originator_version=notification.originator_version,
        topic=notification.topic,
        state=notification.state,
    )


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _as_event(event: Any) -> DomainEvent:
    if not isinstance(event, DomainEvent):
        raise MapperDeserialisationError(f"{type(event).__name__} is not a hash-chained event")
    return event
