"""Projection helpers without I/O: the settlement month, as-of schema names, stored-event decoding."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from events import GENESIS_HASH, event_hash
from events.base import BusinessType
from events.prescription import PrescriptionApproved
from projections.base import Undecodable
from projections.hospital_settlement.ledger import settlement_month
from projections.registry import NAMES, build, resolve
from services.replay import as_of_schema, decode_stored


def test_settlement_month_is_the_china_standard_time_month() -> None:
    assert settlement_month(datetime(2026, 1, 31, 15, 59, 59, tzinfo=UTC)) == "2026-01"
    assert settlement_month(datetime(2026, 1, 31, 16, 0, tzinfo=UTC)) == "2026-02"  # 00:00 on 1 Feb in Beijing
    assert settlement_month(datetime(2026, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))) == "2027-01"


def test_as_of_schema_name_is_utc_and_needs_a_timezone() -> None:
    at = datetime(2026, 2, 1, 8, 30, 5, tzinfo=timezone(timedelta(hours=8)))
    assert as_of_schema("traceability", at) == "traceability_asof_20260201003005"
    with pytest.raises(ValueError):
        as_of_schema("traceability", datetime(2026, 2, 1))


def test_decode_stored_reads_eventsourcing_topic_and_json_state() -> None:
    e = PrescriptionApproved(originator_id=uuid.uuid4(), originator_version=2, timestamp=datetime.now(UTC),
                             prev_hash=GENESIS_HASH, business_type=BusinessType.INTERNET, pharmacist_id="PHA-1")
    e = e.model_copy(update={"hash": event_hash(e)})
    d = decode_stored(41, str(e.originator_id), 2, "events.prescription:PrescriptionApproved",
                      json.dumps(e.model_dump(mode="json")).encode())
    assert (d.event, d.event_type, d.version, d.notification_id) == (e, "PrescriptionApproved", 2, 41)
    assert d.event_id == str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:rxtrail:event"),
                                        f"{e.originator_id}/2"))
    with pytest.raises(Undecodable):
        decode_stored(42, str(e.originator_id), 3, "events.prescription:PrescriptionApproved", b'{"x": 1}')


def test_registry_resolves_names() -> None:
    assert resolve("all") == list(NAMES)
    assert [build(n).name for n in NAMES] == list(NAMES)
    with pytest.raises(ValueError):
        resolve("statements")
