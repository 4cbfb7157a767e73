"""The aggregates against eventsourcing 9.5.6 in memory (POPO): save, load with projectors, snapshots, conflicts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, cast

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import CollectEventsProtocol, DomainEventProtocol
from eventsourcing.persistence import IntegrityError as StoreConflict
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic, resolve_topic

from events import from_json, to_json
from events.base import BusinessType
from services.domain import (
    Prescription,
    RuleViolation,
    TraceCode,
    project_encounter,
    project_prescription,
    project_trace_code,
    verify_stream,
)
from tests.support.domain import World, item, line


class JsonMapper(Mapper[Any]):
    """Minimal stand-in for the application's mapper: state is ``to_json(event)``."""

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=to_json(domain_event),  # type: ignore[arg-type]
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        cls = resolve_topic(stored_event.topic)
        return cast(DomainEventProtocol[Any], from_json(cls.__name__, stored_event.state))


class RxApp(Application[Any]):
    env: ClassVar[dict[str, str]] = {"PERSISTENCE_MODULE": "eventsourcing.popo"}

    def construct_mapper(self) -> Mapper[Any]:
        return JsonMapper(transcoder=cast(Transcoder, None))


class SnapshottingRxApp(RxApp):
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Prescription: 3}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {Prescription: project_prescription}


@pytest.fixture
def app() -> Iterator[RxApp]:
    a = RxApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield a
    a.close()


def test_aggregates_satisfy_collect_events_protocol() -> None:
    rx = World().issued()
    assert isinstance(rx, CollectEventsProtocol)
    assert all(isinstance(e, DomainEventProtocol) for e in rx.pending_events)


def test_save_and_load_with_projectors(app: RxApp) -> None:
    w = World()
    enc = w.encounter()
    rx = w.issued(encounter=enc)
    rx.approve(clock=w.clock, pharmacist=w.pharmacist)
    app.save(enc, rx)
    loaded = app.repository.get(rx.id, projector_func=project_prescription)
    assert loaded == rx and loaded.version == 2 and loaded.status == "approved"
    assert app.repository.get(enc.id, projector_func=project_encounter) == enc
    stored = list(app.events.get(rx.id))
    assert verify_stream(stored) is None  # type: ignore[arg-type]


def test_dispense_and_trace_codes_commit_together(app: RxApp) -> None:
    w = World()
    rx = w.accepted()
    app.save(rx)
    rx = app.repository.get(rx.id, projector_func=project_prescription)
    codes = w.dispense(rx, line(quantity=2, codes=2))
    app.save(rx, *codes)
    for tc in codes:
        loaded = app.repository.get(TraceCode.id_for(tc.code), projector_func=project_trace_code)
        assert loaded.sold and loaded.prescription_id == rx.id


def test_r8_concurrent_first_sales_conflict_and_loser_is_flagged(app: RxApp) -> None:
    w = World()
    a, b = w.accepted(item(quantity=1)), w.accepted(item(quantity=1))
    app.save(a, b)
    a = app.repository.get(a.id, projector_func=project_prescription)
    b = app.repository.get(b.id, projector_func=project_prescription)
    shared = line(quantity=1, codes=1)
    code = shared.trace_codes[0]
    sold_a = w.dispense(a, shared)
    sold_b = w.dispense(b, shared)
    app.save(a, *sold_a)
    with pytest.raises(StoreConflict):
        app.save(b, *sold_b)
    assert app.repository.get(b.id, projector_func=project_prescription).status == "accepted"

    b = app.repository.get(b.id, projector_func=project_prescription)
    existing = app.repository.get(TraceCode.id_for(code), projector_func=project_trace_code)
    with pytest.raises(RuleViolation) as exc:
        w.dispense(b, shared, held={code: existing})
    assert exc.value.rule_id == "R8"
    b.record_flag(clock=w.clock, violation=exc.value)
    app.save(b)
    assert app.repository.get(b.id, projector_func=project_prescription).flags == ["R8"]


def test_concurrent_double_dispense_is_impossible(app: RxApp) -> None:
    w = World()
    rx = w.accepted()
    app.save(rx)
    first = app.repository.get(rx.id, projector_func=project_prescription)
    second = app.repository.get(rx.id, projector_func=project_prescription)
    w.dispense(first)
    w.dispense(second)
    app.save(first)
    with pytest.raises(StoreConflict):
        app.save(second)


def test_snapshots_are_taken_and_used() -> None:
    snap_app = SnapshottingRxApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        w = World()
        rx = w.settled()
        snap_app.save(rx)
        assert snap_app.snapshots is not None
        snapshots = list(snap_app.snapshots.get(rx.id))
        assert [s.originator_version for s in snapshots] == [3, 6]
        loaded = snap_app.repository.get(rx.id, projector_func=project_prescription)
        assert loaded == rx
        loaded.refuse_fees(clock=w.clock, amount="1.00", reason="x", audit_ref="A")
        snap_app.save(loaded)
        assert verify_stream(list(snap_app.events.get(rx.id))) is None  # type: ignore[arg-type]
    finally:
        snap_app.close()


def test_offline_sale_then_online_dispense_is_r8(app: RxApp) -> None:
    w = World()
    shared = line(quantity=1, codes=1)
    code = shared.trace_codes[0]
    app.save(w.sell(code, seller_id="PH-X", business_type=BusinessType.OFFLINE))
    rx = w.accepted(item(quantity=1))
    existing = app.repository.get(TraceCode.id_for(code), projector_func=project_trace_code)
    with pytest.raises(RuleViolation, match="R8"):
        w.dispense(rx, shared, held={code: existing})
