"""Projections declare the event types they read; the consumer passes the others by version from the relay's
headers without decoding them, and never hands them to ``apply``."""

from __future__ import annotations

from events import to_json
from events.envelope import AGGREGATE_ID, AGGREGATE_VERSION
from projections.base import decode, reads_of
from projections.registry import NAMES, build
from services.simulate import all_events, make_trails, relay_headers


def test_unread_types_are_passed_from_headers_and_read_types_decoded() -> None:
    events = all_events(make_trails(3, seed=11))
    for name in NAMES:
        reads = build(name).reads  # type: ignore[attr-defined]
        assert reads, name
        for n, e in enumerate(events, 1):
            d = decode(to_json(e), relay_headers(e, n), reads=reads)
            assert (d.aggregate_id, d.version, d.notification_id) == (e.originator_id, e.originator_version, n)
            assert d.event_type == type(e).__name__
            if type(e).__name__ in reads:
                assert not d.unread and d.event == e
            else:
                assert d.unread and d.event is None and d.undecodable is None


def test_an_unread_type_without_the_relay_headers_is_decoded() -> None:
    e = all_events(make_trails(1, seed=3))[0]
    headers = [(k, v) for k, v in relay_headers(e, 1) if k not in (AGGREGATE_ID, AGGREGATE_VERSION)]
    d = decode(to_json(e), headers, reads=frozenset())
    assert not d.unread and d.event == e


def test_reads_of_several_is_the_union_and_none_when_one_reads_everything() -> None:
    hospital, pharmacy = build("hospital_settlement"), build("pharmacy_settlement")
    assert reads_of(hospital, pharmacy) == hospital.reads | pharmacy.reads  # type: ignore[attr-defined]

    class Everything:
        name = "everything"

    assert reads_of(hospital, Everything()) is None


def test_a_stored_event_of_an_unread_type_is_passed_by_version() -> None:
    from eventsourcing.utils import get_topic

    from projections.base import decode_stored

    e = all_events(make_trails(1, seed=5))[0]
    row = (7, e.originator_id, e.originator_version, get_topic(type(e)), to_json(e))
    read = decode_stored(*row, reads=frozenset({type(e).__name__}))
    assert not read.unread and read.event == e
    passed = decode_stored(*row, reads=frozenset())
    assert passed.unread and passed.event is None and (passed.aggregate_id, passed.version, passed.notification_id) \
        == (e.originator_id, e.originator_version, 7)


def test_an_unknown_type_is_not_passed_but_fails_to_decode() -> None:
    import pytest

    from events.envelope import EVENT_TYPE
    from projections.base import Undecodable

    e = all_events(make_trails(1, seed=3))[0]
    headers = [(k, b"PrescriptionTeleported" if k == EVENT_TYPE else v) for k, v in relay_headers(e, 1)]
    with pytest.raises(Undecodable):
        decode(to_json(e), headers, reads=frozenset())
