"""Hash chain: every event hashes its canonical form and links to its predecessor; tampering is named."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from events import DomainEvent, canonical_bytes, from_json, to_json, type_name
from events.base import GENESIS_HASH
from events.prescription import RoutingBasis
from services.domain import IntegrityError, Prescription, project_all, verify_stream
from tests.support.domain import World


def stream() -> list[DomainEvent]:
    w = World()
    rx = w.settled()
    return rx.collect_events()


def test_untouched_stream_verifies() -> None:
    events = stream()
    assert verify_stream(events) is None
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))


def test_tampered_field_names_that_version() -> None:
    events = stream()
    dispensed = next(e for e in events if type_name(e) == "PrescriptionDispensed")
    stored = json.loads(to_json(dispensed))
    stored["lines"][0]["quantity"] = 40
    events[dispensed.originator_version - 1] = from_json("PrescriptionDispensed", stored)  # type: ignore[assignment]
    broken = verify_stream(events)
    assert broken is not None
    assert broken.aggregate_id == dispensed.originator_id
    assert broken.version == dispensed.originator_version
    assert "hash" in broken.reason


def test_rehashed_tampered_event_breaks_the_next_link() -> None:
    events = stream()
    forged = events[2].model_copy(update={"basis": RoutingBasis.ROUTING_RULE})
    forged = forged.model_copy(update={"hash": hashlib.sha256(canonical_bytes(forged)).hexdigest()})
    events[2] = forged
    broken = verify_stream(events)
    assert broken is not None and broken.version == 4 and "prev_hash" in broken.reason


def test_missing_event_is_reported() -> None:
    events = stream()
    del events[3]
    broken = verify_stream(events)
    assert broken is not None and broken.version == 5 and "follows" in broken.reason


def test_interleaved_streams_verify_independently() -> None:
    a, b = stream(), stream()
    mixed = [e for pair in zip(a, b, strict=True) for e in pair]
    assert verify_stream(mixed) is None
    b[1] = b[1].model_copy(update={"pharmacist_id": "RPH-666"})
    mixed = [e for pair in zip(a, b, strict=True) for e in pair]
    broken = verify_stream(mixed)
    assert broken is not None and broken.aggregate_id == b[1].originator_id and broken.version == 2


def test_partial_stream_checked_against_known_head() -> None:
    events = stream()
    tail = events[3:]
    assert verify_stream(tail) is None
    head = {events[0].originator_id: (3, events[2].hash)}
    assert verify_stream(tail, start_hashes=head) is None
    wrong = {events[0].originator_id: (3, "f" * 64)}
    broken = verify_stream(tail, start_hashes=wrong)
    assert broken is not None and broken.version == 4


def test_projector_refuses_a_broken_link() -> None:
    events = stream()
    events[1] = events[1].model_copy(update={"prev_hash": "e" * 64})
    with pytest.raises(IntegrityError):
        project_all(Prescription, events)
