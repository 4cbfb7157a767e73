"""`rxtrail verify`: recompute every stream's hash chain from the event store and from ``rx.events``, and check the
signed checkpoints against the log. Exit code: 0 intact, 1 tampered.

An event's hash is checked two ways when the catalogue knows its type: the domain's own rule
(``events.from_json`` → ``services.domain.hashchain.verify_stream``, which hashes ``events.base.canonical_bytes``)
and the same rule applied directly to the stored JSON (sha256 of the canonical JSON — sorted keys, no whitespace,
``ensure_ascii=False`` — of ``{"event_type": <class name>, **state}`` without ``hash``). Types the catalogue does
not know (and offline bundles) use the stored-JSON rule only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

log = logging.getLogger("rxtrail.verify")

GENESIS = "0" * 64
_TYPE_RE = re.compile(r"[^:.]+$")


def event_type_of(topic: str) -> str:
    m = _TYPE_RE.search(topic or "")
    return m.group(0) if m else ""


def canonical_stored_bytes(event_type: str, doc: Mapping[str, Any]) -> bytes:
    payload = {"event_type": event_type, **{k: v for k, v in doc.items() if k != "hash"}}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def stored_event_hash(event_type: str, doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_stored_bytes(event_type, doc)).hexdigest()


@dataclass(frozen=True)
class Finding:
    source: str  # "store" | "kafka" | "checkpoint"
    aggregate_id: str
    version: int
    reason: str

    def __str__(self) -> str:
        return f"[{self.source}] {self.aggregate_id} v{self.version}: {self.reason}"


@dataclass
class VerifyReport:
    streams: int = 0
    events: int = 0
    unchained_events: int = 0
    kafka_messages: int | None = None
    missing_on_kafka: int = 0
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        parts = [f"{self.streams} streams, {self.events} events checked in the event store"]
        if self.kafka_messages is not None:
            parts.append(f"{self.kafka_messages} messages on Kafka ({self.missing_on_kafka} not yet relayed)")
        parts.append(f"{self.checkpoints} signed checkpoints")
        head = "INTACT" if self.ok else f"TAMPERED: {len(self.findings)} broken link(s)"
        return "; ".join(parts) + f" — {head}"


# --- one stream -------------------------------------------------------------------------------------------------

Row = tuple[int, int, str, bytes]  # notification id, version, topic, state


def _domain() -> Any:
    """The catalogue and the domain's chain verifier, when they are importable."""
    try:
        from events.codec import EVENT_TYPES, from_json
        from services.domain.hashchain import verify_stream
    except ImportError:  # pragma: no cover - the domain packages are part of the distribution
        return None
    return EVENT_TYPES, from_json, verify_stream


def verify_rows(aggregate_id: str, rows: Sequence[Row], source: str = "store") -> tuple[Finding | None, int]:
    """The first broken link of one aggregate's stream (rows in version order), and how many events carry no
    hash (streams that are not hash-chained)."""
    domain = _domain()
    prev, last_version, unchained = GENESIS, 0, 0
    docs: list[tuple[int, str, dict[str, Any]]] = []
    for _n, version, topic, state in rows:
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
        if "hash" not in doc:
            unchained += 1
            continue
        event_type = event_type_of(topic)
        if stored_event_hash(event_type, doc) != doc["hash"]:
            return broken("hash does not match the event's content")
        if doc.get("prev_hash") != prev:
            return broken(f"prev_hash does not link to version {version - 1}" if version > 1
                          else "first event does not start from the genesis hash")
        prev = str(doc["hash"])
        docs.append((version, event_type, doc))
    if domain is not None and docs:
        event_types, from_json, verify_stream = domain
        if all(t in event_types for _v, t, _d in docs):
            loaded = []
            for version, event_type, doc in docs:
                try:
                    loaded.append(from_json(event_type, doc))
                except Exception as exc:
                    return Finding(source, aggregate_id, version,
                                   f"does not load as {event_type}: {str(exc).splitlines()[0][:200]}"), unchained
            link = verify_stream(loaded)
            if link is not None:
                return Finding(source, aggregate_id, link.version, link.reason), unchained
    return None, unchained


# --- the event store --------------------------------------------------------------------------------------------


def discover_logs(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    from services.integrity.checkpoint import discover_logs as discover

    return discover(conn, schema)


def _streams(conn: psycopg.Connection[Any], log: str, schema: str) -> Iterable[tuple[str, list[Row]]]:
    query = SQL("SELECT originator_id::text, notification_id, originator_version, topic, state FROM {}"
                " ORDER BY originator_id, originator_version").format(Identifier(schema, log))
    current: str | None = None
    rows: list[Row] = []
    with conn.cursor(name=f"verify_{log}") as cur:
        cur.itersize = 5000
        cur.execute(query)
        for aggregate_id, n, v, t, s in cur:
            if aggregate_id != current:
                if current is not None:
                    yield current, rows
                current, rows = aggregate_id, []
            rows.append((int(n), int(v), str(t), bytes(s)))
    if current is not None:
        yield current, rows


def verify_store(database_url: str, *, data_dir: str | Path | None = None, logs: Sequence[str] | None = None,
                 schema: str = "public", report: VerifyReport | None = None
                 ) -> tuple[VerifyReport, dict[tuple[str, int], bytes]]:
    """Check every stream's chain and every checkpoint; also returns the stored bytes by (aggregate, version)
    so a Kafka copy can be compared with them."""
    report = report or VerifyReport()
    stored: dict[tuple[str, int], bytes] = {}
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            names = list(logs) if logs is not None else discover_logs(conn, schema)
            for log_name in names:
                for aggregate_id, rows in _streams(conn, log_name, schema):
                    report.streams += 1
                    report.events += len(rows)
                    finding, unchained = verify_rows(aggregate_id, rows)
                    report.unchained_events += unchained
                    if finding is not None:
                        report.findings.append(finding)
                    for _n, v, _t, s in rows:
                        stored[(aggregate_id, v)] = s
            _verify_checkpoints(conn, names, schema, data_dir, report)
    return report, stored


def _verify_checkpoints(conn: psycopg.Connection[Any], logs: Sequence[str], schema: str,
                        data_dir: str | Path | None, report: VerifyReport) -> None:
    from services.integrity import checkpoint as cp

    exists = conn.execute("SELECT to_regclass('checkpoints') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return
    checkpoints = cp.all_checkpoints(conn)
    report.checkpoints = len(checkpoints)
    if not checkpoints:
        return
    public_key = cp.load_public_key(data_dir) if data_dir is not None else None
    previous: bytes | None = None
    for c in checkpoints:
        body = c.body
        if public_key is not None and not c.verify_signature(public_key):
            report.findings.append(Finding("checkpoint", "-", c.id, "signature does not verify with the key in "
                                                                    "the data dir"))
        expected_prev = hashlib.sha256(previous).hexdigest() if previous is not None else None
        if body.get("previous") != expected_prev:
            report.findings.append(Finding("checkpoint", "-", c.id, "does not chain to the checkpoint before it"))
        previous = c.payload
    # Replay each log once, comparing the running digest at every checkpoint boundary; the latest checkpoint's
    # Merkle root is recomputed from the heads as of its position.
    latest = checkpoints[-1].body
    heads: dict[tuple[str, str], tuple[int, str]] = {}
    for log_name in logs:
        bounds = sorted({int(c.body["logs"][log_name]["last_notification_id"]): c for c in checkpoints
                         if log_name in c.body["logs"]}.items())
        if not bounds:
            continue
        digest, upto, i = cp.ZERO_DIGEST, bounds[-1][0], 0

        broken = False
        for n, aggregate_id, version, _t, state in cp.iter_log(conn, log_name, 0, upto, schema):
            while i < len(bounds) and n > bounds[i][0]:
                if not _digest_matches(digest, bounds[i], log_name, report):
                    broken = True
                    break
                i += 1
            if broken:
                break
            head = cp.stored_head(state)
            digest = cp.digest_step(digest, n, aggregate_id, version, head)
            heads[(log_name, aggregate_id)] = (version, head)
        while not broken and i < len(bounds):
            if not _digest_matches(digest, bounds[i], log_name, report):
                broken = True
            i += 1
    leaves = [cp.leaf_hash(lg, a, v, h) for (lg, a), (v, h) in sorted(heads.items())]
    if cp.merkle_root(leaves).hex() != latest["merkle_root"]:
        report.findings.append(Finding("checkpoint", "-", int(latest["id"]),
                                       "the aggregates' heads differ from the latest checkpoint's Merkle root"))


def _digest_matches(digest: bytes, bound: tuple[int, Any], log_name: str, report: VerifyReport) -> bool:
    position, c = bound
    if digest.hex() == c.body["logs"][log_name]["digest"]:
        return True
    report.findings.append(Finding(
        "checkpoint", log_name, c.id,
        f"the log up to notification id {position} differs from what checkpoint #{c.id} signed "
        "(events before that point were changed, removed or added)"))
    return False


# --- Kafka ------------------------------------------------------------------------------------------------------


async def read_events_topic(bootstrap: str, topic: str, idle_s: float = 2.0, timeout_s: float = 300.0
                            ) -> list[Any]:
    """Every message on ``topic``, from each partition's start to its high watermark (as fetched)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():  # naming a missing topic makes Tansu create it
            return []
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    messages: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or
                                                        await _partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline, idle_since = loop.time() + timeout_s, loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
            if batch:
                idle_since = loop.time()
            done = True
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or await consumer.position(tp) < high:
                    done = False
            if done or loop.time() - idle_since > idle_s:
                break
    finally:
        await consumer.stop()
    return messages


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())


def verify_messages(messages: Iterable[Any], stored: Mapping[tuple[str, int], bytes] | None,
                    report: VerifyReport) -> None:
    by_key: dict[str, dict[int, tuple[int, int, str, bytes]]] = defaultdict(dict)
    count = 0
    for m in messages:
        count += 1
        h = {k: v.decode() for k, v in (m.headers or [])}
        aggregate_id = h.get("aggregate_id") or (m.key or b"").decode()
        try:
            version = int(h.get("aggregate_version", "0"))
            n = int(h.get("notification_id", "0"))
        except ValueError:
            report.findings.append(Finding("kafka", aggregate_id, 0, "headers are not numbers"))
            continue
        topic = h.get("event_type", "")
        seen = by_key[aggregate_id].get(version)
        if seen is not None and seen[3] != m.value:
            report.findings.append(Finding("kafka", aggregate_id, version, "two different messages for one version"))
        by_key[aggregate_id].setdefault(version, (n, version, topic, m.value))
    report.kafka_messages = count
    for aggregate_id, versions in by_key.items():
        rows = [versions[v] for v in sorted(versions)]
        finding, _ = verify_rows(aggregate_id, rows, source="kafka")
        if finding is not None:
            report.findings.append(finding)
        if stored is not None:
            for _n, v, _t, value in rows:
                original = stored.get((aggregate_id, v))
                if original is None:
                    report.findings.append(Finding("kafka", aggregate_id, v, "not in the event store"))
                elif original != value:
                    report.findings.append(Finding("kafka", aggregate_id, v, "differs from the event store"))
    if stored is not None:
        report.missing_on_kafka = sum(1 for (a, v) in stored if v not in by_key.get(a, {}))


def verify(database_url: str | None, bootstrap: str | None = None, *, topic: str = "rx.events",
           data_dir: str | Path | None = None, logs: Sequence[str] | None = None) -> VerifyReport:
    """What `rxtrail verify` runs. ``report.exit_code``: 0 intact, 1 tampered."""
    report = VerifyReport()
    stored: dict[tuple[str, int], bytes] | None = None
    if database_url:
        report, stored = verify_store(database_url, data_dir=data_dir, logs=logs)
    if bootstrap:
        messages = _run(read_events_topic(bootstrap, topic))
        verify_messages(messages, stored, report)
    return report


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
