"""The Kafka contracts in events/: one event id on every path, one header reader, dead-letter headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from events import GENESIS_HASH, event_hash, topics
from events.base import BusinessType
from events.contracts import DLQ_CONSUMER, DLQ_ERROR, DLQ_SOURCE, dead_letter_header_map, dead_letter_headers, record_source
from events.envelope import EVENT_ID, EVENT_TYPE, event_id, event_type_of, header, record_headers
from events.prescription import PrescriptionApproved
from projections.base import decode
from services.replay import decode_stored


def _approved() -> tuple[PrescriptionApproved, bytes]:
    e = PrescriptionApproved(originator_id=uuid.uuid4(), originator_version=2, timestamp=datetime.now(UTC),
                             prev_hash=GENESIS_HASH, business_type=BusinessType.INTERNET, pharmacist_id="PHA-1")
    e = e.model_copy(update={"hash": event_hash(e)})
    return e, json.dumps(e.model_dump(mode="json")).encode()


def test_relay_replay_and_a_headerless_consumer_agree_on_the_event_id() -> None:
    e, state = _approved()
    topic = "events.prescription:PrescriptionApproved"
    sent = record_headers(7, str(e.originator_id), 2, topic, state, "rxtrail_events")
    from_relay = header(sent, EVENT_ID)
    from_store = decode_stored(7, str(e.originator_id), 2, topic, state).event_id
    headerless = decode(state, [(k, v) for k, v in sent if k != EVENT_ID]).event_id
    assert from_relay == from_store == headerless == event_id(e.originator_id, 2)
    assert decode(state, sent).event_id == from_relay


def test_event_type_of_takes_the_last_name() -> None:
    assert event_type_of("events.prescription:PrescriptionIssued") == "PrescriptionIssued"
    assert event_type_of("events.registries:Pharmacy.Designated") == "Designated"
    assert event_type_of("") == ""


def test_header_reads_bytes_text_and_skips_missing_values() -> None:
    headers = [("a", None), ("a", b"one"), ("b", "two"), ("c", b"\xff")]
    assert (header(headers, "a"), header(headers, "b"), header(headers, "x"), header(None, "a")) == ("one", "two",
                                                                                                    None, None)
    assert header(headers, "c") == "\ufffd"
    assert header(record_headers(1, "x", 1, "events.prescription:PrescriptionIssued", b"{}", "l"), EVENT_TYPE) \
        == "PrescriptionIssued"


def test_dead_letter_headers_keep_the_original_ones_first() -> None:
    source = record_source(topics.EVENTS, 3, 41)
    dead = dead_letter_headers([("event_id", b"e1")], error="bad", consumer="g", source=source)
    assert dead == [("event_id", b"e1"), (DLQ_ERROR, b"bad"), (DLQ_SOURCE, b"rx.events/3/41"), (DLQ_CONSUMER, b"g")]
    assert dead_letter_header_map(None, error="bad", consumer="g") == {DLQ_ERROR: "bad", DLQ_CONSUMER: "g"}


def test_topic_names() -> None:
    assert topics.pharmacy_topic("PH1") == "rx.pharmacy.PH1"
    assert topics.inbound_topic("H1") == "rx.inbound.H1"
    assert topics.INBOUND_PHARMACY.startswith(topics.INBOUND_PREFIX)
