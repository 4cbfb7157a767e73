"""Self-proving trail bundles: one aggregate's events, its hash chain, the signed checkpoint that covers it, the
Merkle inclusion proof of its head and the public key, in one JSON file anyone can check offline. An investigation
bundle (``rxtrail investigate --bundle``) holds several such trails plus what was shown about them, signed as a whole;
every event the shown report cites must be proven by one of its trails.

``export_trail`` writes one (making a covering checkpoint first when the latest does not cover the trail);
``verify_bundle`` checks one with nothing but the file and, ideally, a public key the reader already trusts. The
events are checked by the same chain check as the event store (``services.integrity.chain``), with the stored-JSON
hash rule only, so a bundle verifies without the event catalogue's decoding.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.adapters.event_log import LoggedEvent, find_stream
from services.integrity.chain import Finding, Report, check_stream
from services.integrity.checkpoint import (
    PAYLOAD_FORMAT,
    Checkpoint,
    CheckpointError,
    canonical_json,
    create_checkpoint,
    ensure_tables,
    heads_and_leaves,
    latest_checkpoint,
    leaf_hash,
    load_or_create_key,
    merkle_path,
    raw_public_key,
    root_from_path,
)

BUNDLE_FORMAT = "rxtrail.trail/1"


def _signing_bytes(bundle: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in bundle.items() if k != "export_signature"})


def build_bundle(key: Ed25519PrivateKey, checkpoint: Checkpoint, log: str, aggregate_id: str,
                 rows: Sequence[Sequence[Any]], head_rows: Sequence[tuple[str, str, int, str]],
                 leaves: Sequence[bytes]) -> dict[str, Any]:
    """The bundle for one aggregate (rows: notification id, version, topic, state) under ``checkpoint``."""
    index = next(i for i, r in enumerate(head_rows) if r[0] == log and r[1] == aggregate_id)
    events = []
    for n, v, topic, state in rows:
        events.append({"notification_id": int(n), "version": int(v), "topic": topic,
                       "state": bytes(state).decode("utf-8")})
    chain = []
    for e in events:
        doc = json.loads(e["state"])
        chain.append({"version": e["version"], "prev_hash": doc.get("prev_hash"), "hash": doc.get("hash")})
    _log, _aid, head_version, head = head_rows[index]
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "aggregate_id": aggregate_id,
        "log": log,
        "events": events,
        "chain": chain,
        "checkpoint": {"payload": checkpoint.payload.decode(), "signature":
                       base64.b64encode(checkpoint.signature).decode()},
        "proof": {"leaf": {"log": log, "aggregate_id": aggregate_id, "version": head_version, "head": head},
                  "index": index, "path": merkle_path(leaves, index)},
        "public_key": base64.b64encode(raw_public_key(key.public_key())).decode(),
    }
    bundle["export_signature"] = base64.b64encode(key.sign(_signing_bytes(bundle))).decode()
    return bundle


def export_trail(database_url: str | Mapping[str, str], data_dir: str | Path, rx_id: str, out: str | Path, *,
                 logs: Sequence[str] | None = None, schema: str = "public") -> Path:
    """Write one aggregate's events, its chain, the covering checkpoint (signed), the Merkle inclusion proof and
    the public key as one JSON file that ``verify_bundle`` checks offline. Makes a new checkpoint first when the
    latest one does not cover the aggregate's last event.

    ``database_url``: the event store, or with region shards every store by name (the trail is proven under the
    checkpoint of the store that holds it)."""
    key = load_or_create_key(data_dir)
    aggregate_id = str(rx_id)
    trails = _prove(key, database_url, data_dir, [aggregate_id], logs, schema)
    if not trails:
        raise CheckpointError(f"no events for aggregate {aggregate_id}")
    path = Path(out)
    path.write_bytes(canonical_json(trails[0]))
    return path


def _strict_b64(text: object) -> bytes:
    """Decode base64 that is exactly the canonical encoding of its bytes: no stray padding bits, no
    second spelling of the same signature, so any change to a bundle's text is a change the check sees."""
    raw = base64.b64decode(str(text), validate=True)
    if base64.b64encode(raw).decode() != text:
        raise ValueError("base64 field is not in canonical form")
    return raw


def verify_bundle(path: str | Path, trusted_public_key: bytes | Ed25519PublicKey | None = None) -> Report:
    """Check a trail bundle (``rxtrail.trail/1``) or an investigation bundle (``rxtrail.investigation/1``: several
    trails and what was shown about them) with nothing but the file (and, ideally, a public key you already trust)."""
    report = Report()

    def problem(reason: str, version: int = 0, aggregate_id: str | None = None) -> None:
        report.findings.append(Finding("bundle", aggregate_id or report.aggregate_id or "", version, reason))

    try:
        bundle = json.loads(Path(path).read_bytes())
        if isinstance(bundle, dict) and bundle.get("format") == INVESTIGATION_FORMAT:
            _verify_investigation(bundle, trusted_public_key, report, problem)
            return report
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            problem(f"not a {BUNDLE_FORMAT} or {INVESTIGATION_FORMAT} bundle")
            return report
        report.aggregate_id = str(bundle["aggregate_id"])
        _verify_trail(bundle, trusted_public_key, report, problem)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        problem(f"malformed bundle: {type(exc).__name__}: {exc}")
    return report


def _trusted_raw(trusted_public_key: bytes | Ed25519PublicKey) -> bytes:
    return trusted_public_key if isinstance(trusted_public_key, bytes) else raw_public_key(trusted_public_key)


def _verify_trail(bundle: dict[str, Any], trusted_public_key: bytes | Ed25519PublicKey | None, report: Report,
                  problem: Any) -> tuple[str, int]:
    """Check one trail bundle (a dict) into ``report``; returns (aggregate id, last version) of what it proves."""
    aggregate_id = str(bundle["aggregate_id"])

    def bad(reason: str, version: int = 0) -> None:
        problem(reason, version, aggregate_id)

    if bundle.get("format") != BUNDLE_FORMAT:
        bad(f"not a {BUNDLE_FORMAT} bundle")
        return aggregate_id, 0
    public_raw = _strict_b64(bundle["public_key"])
    public_key = Ed25519PublicKey.from_public_bytes(public_raw)
    if trusted_public_key is not None and _trusted_raw(trusted_public_key) != public_raw:
        bad("the bundle is signed with a key that is not the trusted one")
    try:
        public_key.verify(_strict_b64(bundle["export_signature"]), _signing_bytes(bundle))
    except InvalidSignature:
        bad("export signature does not match the bundle's content")
    payload = str(bundle["checkpoint"]["payload"]).encode()
    try:
        public_key.verify(_strict_b64(bundle["checkpoint"]["signature"]), payload)
    except InvalidSignature:
        bad("checkpoint signature is invalid")
    body = json.loads(payload)
    report.checkpoint_id = int(body["id"])
    report.checkpoints = max(report.checkpoints, 1)
    if body.get("format") != PAYLOAD_FORMAT:
        bad("checkpoint payload has an unknown format")

    log = str(bundle["log"])
    events, chain = bundle["events"], bundle["chain"]
    if not events:
        bad("the bundle holds no events")
        return aggregate_id, 0
    rows = [(int(e["version"]), str(e["topic"]), str(e["state"]).encode()) for e in events]
    report.streams += 1
    report.events += len(rows)
    finding, _ = check_stream(aggregate_id, rows, source="bundle", decode=False, require_hash=True)
    if finding is not None:
        report.findings.append(finding)
    head, last_version, last_notification = "", 0, 0
    for i, e in enumerate(events):
        version = int(e["version"])
        doc = json.loads(e["state"])
        if i >= len(chain) or chain[i] != {"version": version, "prev_hash": doc.get("prev_hash"),
                                           "hash": doc.get("hash")}:
            bad("chain entry disagrees with the event", version)
        if int(e["notification_id"]) <= last_notification:
            bad("notification ids out of order", version)
        head, last_version = str(doc.get("hash")), version
        last_notification = int(e["notification_id"])
    if len(chain) != len(events):
        bad("chain and events differ in length")

    leaf = bundle["proof"]["leaf"]
    if leaf != {"log": log, "aggregate_id": aggregate_id, "version": last_version, "head": head}:
        bad("the proven head is not the last event of this trail")
    root = root_from_path(leaf_hash(log, aggregate_id, last_version, head), bundle["proof"]["path"])
    if root.hex() != body.get("merkle_root"):
        bad("the inclusion proof does not lead to the checkpoint's Merkle root")
    if int(body["logs"].get(log, {}).get("last_notification_id", 0)) < last_notification:
        bad("the checkpoint does not cover the trail's last event")
    return aggregate_id, last_version


# --- investigation bundles: several trails and what was shown about them ------------------------------------------

INVESTIGATION_FORMAT = "rxtrail.investigation/1"


def _links(shown: Any) -> list[tuple[str, int]]:
    """Every (aggregate id, version) the shown document cites: ``evidence`` links of findings and the
    ``stream_id``/``aggregate_id`` + ``version`` of timeline steps."""
    out: list[tuple[str, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            stream = node.get("aggregate_id", node.get("stream_id"))
            if stream is not None and isinstance(node.get("version"), int) and "event_id" in node:
                out.append((str(stream), int(node["version"])))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return out


def _verify_investigation(bundle: dict[str, Any], trusted_public_key: bytes | Ed25519PublicKey | None,
                          report: Report, problem: Any) -> None:
    report.aggregate_id = "investigation"
    public_raw = _strict_b64(bundle["public_key"])
    public_key = Ed25519PublicKey.from_public_bytes(public_raw)
    if trusted_public_key is not None and _trusted_raw(trusted_public_key) != public_raw:
        problem("the bundle is signed with a key that is not the trusted one")
    try:
        public_key.verify(_strict_b64(bundle["export_signature"]), _signing_bytes(bundle))
    except InvalidSignature:
        problem("export signature does not match the bundle's content")
    proven: dict[str, int] = {}
    for trail in bundle["trails"]:
        if _strict_b64(trail["public_key"]) != public_raw:
            problem("a trail is signed with another key than the bundle", 0, str(trail.get("aggregate_id")))
        aggregate_id, last_version = _verify_trail(trail, trusted_public_key, report, problem)
        proven[aggregate_id] = last_version
    for aggregate_id, version in _links(bundle["shown"]):
        if proven.get(aggregate_id, 0) < version:
            problem("the shown report cites an event the bundle does not prove", version, aggregate_id)


def _read_trails(database_url: str, aggregate_ids: Sequence[str], logs: Sequence[str] | None, schema: str
                 ) -> tuple[Checkpoint | None, list[tuple[str, str, list[LoggedEvent]]],
                            list[tuple[str, str, int, str]], list[bytes]] | None:
    """Several aggregates' events under the latest checkpoint, read in one snapshot; None if it does not cover them
    all (aggregates with no events are left out; none found: no checkpoint needed, nothing else read)."""
    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            checkpoint = latest_checkpoint(conn)
            found = []
            for aggregate_id in aggregate_ids:
                stream = find_stream(conn, aggregate_id, logs, schema)
                if stream is not None:
                    found.append((aggregate_id, *stream))
            if not found:
                return checkpoint, [], [], []
            if checkpoint is None:
                return None
            for _aid, log, rows in found:
                covered = int(checkpoint.body["logs"].get(log, {}).get("last_notification_id", 0))
                if max(r.notification_id for r in rows) > covered:
                    return None
            head_rows, leaves = heads_and_leaves(conn)
    return checkpoint, found, head_rows, leaves


def _prove(key: Ed25519PrivateKey, database_url: str | Mapping[str, str], data_dir: str | Path,
           aggregate_ids: Sequence[str], logs: Sequence[str] | None, schema: str) -> list[dict[str, Any]]:
    """A trail bundle for each of ``aggregate_ids`` that has events, each under the checkpoint of the store that
    holds it (``database_url``: one store, or every store by name with region shards; a store's checkpoint is made
    first when its latest does not cover them). Sorted by aggregate id."""
    stores = dict(database_url) if isinstance(database_url, Mapping) else {"": database_url}
    wanted = sorted({str(a) for a in aggregate_ids})
    trails: list[dict[str, Any]] = []
    for name, url in stores.items():
        if not wanted:
            break
        snapshot = _read_trails(url, wanted, logs, schema)
        if snapshot is None:
            create_checkpoint(url, data_dir, logs=logs, schema=schema, store=name or None)
            snapshot = _read_trails(url, wanted, logs, schema)
            if snapshot is None:
                raise CheckpointError(f"no checkpoint covers the trails{f' in store {name}' if name else ''}")
        checkpoint, found, head_rows, leaves = snapshot
        if not found:
            continue
        assert checkpoint is not None  # found and covered
        trails += [build_bundle(key, checkpoint, log, aggregate_id,
                                [(r.notification_id, r.version, r.topic, r.state) for r in rows], head_rows, leaves)
                   for aggregate_id, log, rows in found]
        held = {aggregate_id for aggregate_id, _, _ in found}
        wanted = [a for a in wanted if a not in held]
    return sorted(trails, key=lambda b: str(b["aggregate_id"]))


def export_investigation(database_url: str | Mapping[str, str], data_dir: str | Path, shown: dict[str, Any],
                         aggregate_ids: Sequence[str], out: str | Path, *, logs: Sequence[str] | None = None,
                         schema: str = "public") -> Path:
    """Write what an investigation showed (``shown``, JSON-ready) with a trail bundle for each aggregate it rests on
    (the same proof as ``export_trail``: events, chain, signed checkpoint, inclusion proof), signed as a whole, as
    one file ``verify_bundle`` checks offline. Makes a new checkpoint first when the latest does not cover them.

    ``database_url``: the event store, or with region shards every store by name (each trail is proven under the
    checkpoint of the store that holds it)."""
    key = load_or_create_key(data_dir)
    bundle: dict[str, Any] = {
        "format": INVESTIGATION_FORMAT,
        "shown": json.loads(json.dumps(shown, default=str)),
        "trails": _prove(key, database_url, data_dir, aggregate_ids, logs, schema),
        "public_key": base64.b64encode(raw_public_key(key.public_key())).decode(),
    }
    bundle["export_signature"] = base64.b64encode(key.sign(_signing_bytes(bundle))).decode()
    path = Path(out)
    path.write_bytes(canonical_json(bundle))
    return path
