"""The one hash-chain check on stored events, and the one report every verification fills in.

An event's hash is checked two ways when the catalogue knows its type: the domain's own rule
(``events.from_json`` → ``services.domain.hashchain.verify_stream``, which hashes ``events.base.canonical_bytes``)
and the same rule applied directly to the stored JSON (sha256 of the canonical JSON — sorted keys, no whitespace,
``ensure_ascii=False`` — of ``{"event_type": <class name>, **state}`` without ``hash``). Types the catalogue does
not know, and offline bundles, use the stored-JSON rule only.

The same check runs on rows read from the event store, on messages read back from ``rx.events`` and on the events
inside a trail bundle; each names what it found by source, stream (aggregate id) and version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.base import GENESIS_HASH, DomainEvent
from events.codec import EVENT_TYPES, from_json
from events.envelope import event_type_of
from services.domain.hashchain import verify_stream

StoredForm = tuple[int, str, bytes]
"""One stored event as the check needs it: (version, eventsourcing topic, stored JSON bytes)."""


def canonical_stored_bytes(event_type: str, doc: Mapping[str, Any]) -> bytes:
    payload = {"event_type": event_type, **{k: v for k, v in doc.items() if k != "hash"}}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def stored_event_hash(event_type: str, doc: Mapping[str, Any]) -> str:
    """The hash an event of ``event_type`` whose stored JSON is ``doc`` must carry."""
    return hashlib.sha256(canonical_stored_bytes(event_type, doc)).hexdigest()


@dataclass(frozen=True)
class Finding:
    """One thing a verification found wrong: where it was read (``source``: store, kafka, checkpoint, bundle),
    the stream (aggregate id) and version, and why. A finding only a checkpoint catches names the stream and
    version it found changed and the checkpoint that signed them (``checkpoint``); a finding about a checkpoint
    itself (deleted, altered, not chained) names the checkpoint and leaves the stream empty."""

    source: str
    aggregate_id: str
    version: int
    reason: str
    checkpoint: int | None = None

    @property
    def location(self) -> str:
        stream = f"{self.aggregate_id} v{self.version}" if self.version else self.aggregate_id
        if self.checkpoint is None:
            return stream
        return f"{stream} (checkpoint #{self.checkpoint})" if stream else f"checkpoint #{self.checkpoint}"

    def __str__(self) -> str:
        return f"[{self.source}] {self.location}: {self.reason}"


@dataclass
class Report:
    """What a verification checked and found; intact when ``findings`` is empty.

    For a trail bundle, ``aggregate_id`` names the one stream it carries and ``checkpoint_id`` the checkpoint
    it is proven under."""

    streams: int = 0
    events: int = 0
    unchained_events: int = 0
    """Events that carry no hash (streams that are not hash-chained)."""
    kafka_messages: int | None = None
    missing_on_kafka: int = 0
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    latest_checkpoint_at: str | None = None
    uncovered_events: int = 0
    """Events after the latest checkpoint: only the chain (and ``rx.events`` with ``--kafka``) vouches for them."""
    uncovered_streams: int = 0
    """Streams with an event after the latest checkpoint."""
    checkpoint_copies: dict[str, int] = field(default_factory=dict)
    """Copies of checkpoints held outside the database and compared with its chain, by where they came from
    (``rx.checkpoints``, a witness file)."""
    notes: list[str] = field(default_factory=list)
    """What could not be checked (e.g. Kafka not reachable); not findings."""
    aggregate_id: str | None = None
    checkpoint_id: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def coverage(self) -> str:
        """How much of the store the latest checkpoint does not cover yet."""
        if self.latest_checkpoint is None:
            return f"no checkpoint covers the store: {self.uncovered_events} events in {self.uncovered_streams} " \
                   "streams not covered"
        return (f"latest checkpoint #{self.latest_checkpoint} ({self.latest_checkpoint_at}); "
                f"{self.uncovered_events} events in {self.uncovered_streams} streams not yet covered")

    def summary(self) -> str:
        parts = [f"{self.streams} streams, {self.events} events checked in the event store"]
        if self.kafka_messages is not None:
            parts.append(f"{self.kafka_messages} messages on Kafka ({self.missing_on_kafka} not yet relayed)")
        parts.append(f"{self.checkpoints} signed checkpoints")
        parts.append(self.coverage())
        for where, n in self.checkpoint_copies.items():
            parts.append(f"{n} checkpoint copies from {where} compared")
        head = "INTACT" if self.ok else f"TAMPERED: {len(self.findings)} broken link(s)"
        return "; ".join(parts) + f" — {head}"


def check_stream(aggregate_id: str, rows: Iterable[StoredForm], *, source: str = "store", decode: bool = True,
                 require_hash: bool = False) -> tuple[Finding | None, int]:
    """The first broken link of one aggregate's stream (``rows`` in version order, from version 1), and how many
    of its events carry no hash.

    ``decode``: also load each event through the catalogue and run the domain's check, when every type is
    known. ``require_hash``: an event without a hash is broken (a bundle proves a chain; it cannot skip one).
    """
    prev, last_version, unchained = GENESIS_HASH, 0, 0
    docs: list[tuple[int, str, dict[str, Any]]] = []
    for version, topic, state in rows:
        def broken(reason: str, v: int = version, u: int = unchained) -> tuple[Finding, int]:
            return Finding(source, aggregate_id, v, reason), u

        try:
            doc = json.loads(state)
        except ValueError:
            return broken("the stored state is not valid JSON")
        if not isinstance(doc, dict):
            return broken("the stored state is not a JSON object")
        if str(doc.get("originator_id")) != aggregate_id or doc.get("originator_version") != version:
            return broken(f"the row is {aggregate_id} v{version} but the event says "
                          f"{doc.get('originator_id')} v{doc.get('originator_version')}")
        if version != last_version + 1:
            return broken(f"version {version} follows {last_version}" if last_version
                          else f"the stream starts at version {version}: earlier events are missing")
        last_version = version
        if "hash" not in doc and not require_hash:
            unchained += 1
            continue
        event_type = event_type_of(topic)
        if stored_event_hash(event_type, doc) != doc.get("hash"):
            return broken("hash does not match the event's content")
        if doc.get("prev_hash") != prev:
            return broken(f"prev_hash does not link to version {version - 1}" if version > 1
                          else "first event does not start from the genesis hash")
        prev = str(doc["hash"])
        docs.append((version, event_type, doc))
    if decode and docs and all(t in EVENT_TYPES for _v, t, _d in docs):
        loaded: list[DomainEvent] = []
        for version, event_type, doc in docs:
            try:
                event = from_json(event_type, doc)
            except Exception as exc:
                return Finding(source, aggregate_id, version,
                               f"does not load as {event_type}: {str(exc).splitlines()[0][:200]}"), unchained
            if not isinstance(event, DomainEvent):
                return Finding(source, aggregate_id, version, f"{event_type} is not a hash-chained event"), unchained
            loaded.append(event)
        link = verify_stream(loaded)
        if link is not None:
            return Finding(source, aggregate_id, link.version, link.reason), unchained
    return None, unchained
