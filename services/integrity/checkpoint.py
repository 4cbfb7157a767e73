"""Signed checkpoints over the whole event log, and self-proving trail bundles for one aggregate.

A checkpoint signs (Ed25519) a small JSON payload:

- per event table ("log"): the last notification id covered and a running digest over every event in log order,
  ``d_n = sha256(d_{n-1} || id(8 bytes) || aggregate id || 0x1f || version || 0x1f || event hash)``, d_0 = 32 zero
  bytes. An event's hash is its stored ``hash`` field (the chain's own claim, whose content is checked by
  ``services.integrity.verify``) or, for an event without one, sha256 of its stored bytes;
- a Merkle root over every aggregate's head (log, aggregate id, last version, last hash) as of that point, sorted
  by (log, aggregate id): leaf = sha256(0x00 || canonical JSON [log, id, version, hash]), node = sha256(0x01 ||
  left || right), an odd node moves up unchanged. A bundle carries one leaf's path to the root, so one
  prescription's trail is proven covered without the rest of the log;
- the previous checkpoint's payload hash, so checkpoints chain too.

Tables: ``checkpoints`` (one row per checkpoint, the exact signed bytes and the signature) and
``checkpoint_heads`` (the heads as of the latest checkpoint, updated in the same transaction).
Keys: ``<data_dir>/checkpoint_ed25519.pem`` (private, 0600, generated once) and ``.pub.pem``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.sql import SQL, Identifier

PAYLOAD_FORMAT = "rxtrail.checkpoint/1"
BUNDLE_FORMAT = "rxtrail.trail/1"
ZERO_DIGEST = bytes(32)
PRIVATE_KEY_FILE = "checkpoint_ed25519.pem"
PUBLIC_KEY_FILE = "checkpoint_ed25519.pub.pem"
_LOCK = 0x7278_636B  # advisory lock: one checkpoint writer at a time

CREATE = (
    (
        "CREATE TABLE IF NOT EXISTS checkpoints ("
        " id bigint PRIMARY KEY, created_at timestamptz NOT NULL, key_id text NOT NULL,"
        " payload bytea NOT NULL, signature bytea NOT NULL, merkle_root text NOT NULL, leaf_count bigint NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS checkpoint_heads ("
        " log text NOT NULL, aggregate_id text NOT NULL, version bigint NOT NULL, head text NOT NULL,"
        " notification_id bigint NOT NULL, PRIMARY KEY (log, aggregate_id))"
    ),
)


class CheckpointError(RuntimeError):
    pass


# --- keys ---------------------------------------------------------------------------------------------------


def load_or_create_key(data_dir: str | Path) -> Ed25519PrivateKey:
    """The signing key in ``data_dir`` (created once, private file mode 0600)."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    private = d / PRIVATE_KEY_FILE
    if private.exists():
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"{private} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return load_or_create_key(d)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (d / PUBLIC_KEY_FILE).write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def load_public_key(data_dir: str | Path) -> Ed25519PublicKey:
    d = Path(data_dir)
    if (d / PUBLIC_KEY_FILE).exists():
        key = serialization.load_pem_public_key((d / PUBLIC_KEY_FILE).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError(f"{d / PUBLIC_KEY_FILE} is not an Ed25519 public key")
        return key
    return load_or_create_key(d).public_key()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


# --- hashing -------------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def stored_head(state: bytes) -> str:
    """The hash an event contributes to digests and heads: its ``hash`` field, else sha256 of its bytes."""
    try:
        doc = json.loads(state)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("hash"), str) and doc["hash"]:
        return str(doc["hash"])
    return hashlib.sha256(state).hexdigest()


def digest_step(digest: bytes, notification_id: int, aggregate_id: str, version: int, head: str) -> bytes:
    return hashlib.sha256(
        digest + notification_id.to_bytes(8, "big") + aggregate_id.encode() + b"\x1f" + str(version).encode()
        + b"\x1f" + head.encode()
    ).digest()


def leaf_hash(log: str, aggregate_id: str, version: int, head: str) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json([log, aggregate_id, version, head])).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"\x02empty").digest()
    level = list(leaves)
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def merkle_path(leaves: Sequence[bytes], index: int) -> list[tuple[str, str]]:
    """Siblings from the leaf up: ("L", hex) = sibling on the left, ("R", hex) = on the right."""
    path: list[tuple[str, str]] = []
    level = list(leaves)
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(("L" if sibling < index else "R", level[sibling].hex()))
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        index //= 2
    return path


def root_from_path(leaf: bytes, path: Iterable[Sequence[str]]) -> bytes:
    node = leaf
    for side, sibling_hex in path:
        sibling = bytes.fromhex(sibling_hex)
        if side == "L":
            node = _node(sibling, node)
        elif side == "R":
            node = _node(node, sibling)
        else:
            raise ValueError(f"bad path side {side!r}")
    return node


# --- checkpoints in PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    id: int
    payload: bytes
    signature: bytes

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))

    def verify_signature(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(self.signature, self.payload)
        except InvalidSignature:
            return False
        return True


def ensure_tables(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK + 1,))
        for statement in CREATE:
            conn.execute(statement)  # type: ignore[arg-type]


def discover_logs(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
        " AND column_name = 'notification_id' AND table_name LIKE %s ORDER BY table_name",
        (schema, "%\\_events"),
    ).fetchall()
    return [r[0] for r in rows]


def iter_log(conn: psycopg.Connection[Any], log: str, after: int, upto: int | None = None, schema: str = "public"
             ) -> Iterator[tuple[int, str, int, str, bytes]]:
    """(notification id, aggregate id, version, topic, state) in log order, streamed."""
    query = SQL("SELECT notification_id, originator_id::text, originator_version, topic, state FROM {}"
                " WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id")
    with conn.cursor(name=f"iter_{log}") as cur:
        cur.itersize = 5000
        cur.execute(query.format(Identifier(schema, log)), (after, upto if upto is not None else 2**62))
        for n, a, v, t, s in cur:
            yield int(n), str(a), int(v), str(t), bytes(s)


def latest_checkpoint(conn: psycopg.Connection[Any]) -> Checkpoint | None:
    row = conn.execute("SELECT id, payload, signature FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else Checkpoint(int(row[0]), bytes(row[1]), bytes(row[2]))


def all_checkpoints(conn: psycopg.Connection[Any]) -> list[Checkpoint]:
    rows = conn.execute("SELECT id, payload, signature FROM checkpoints ORDER BY id").fetchall()
    return [Checkpoint(int(i), bytes(p), bytes(s)) for i, p, s in rows]


def _heads_leaves(conn: psycopg.Connection[Any]) -> tuple[list[tuple[str, str, int, str]], list[bytes]]:
    rows = [(str(lg), str(a), int(v), str(h)) for lg, a, v, h in conn.execute(
        "SELECT log, aggregate_id, version, head FROM checkpoint_heads ORDER BY log, aggregate_id").fetchall()]
    return rows, [leaf_hash(*r) for r in rows]


def create_checkpoint(database_url: str, data_dir: str | Path, *, logs: Sequence[str] | None = None,
                      schema: str = "public") -> Checkpoint:
    """Sign the current head of every log. Incremental: reads only events after the previous checkpoint."""
    key = load_or_create_key(data_dir)
    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            previous = latest_checkpoint(conn)
            prev_body = previous.body if previous else {"logs": {}}
            names = list(logs) if logs is not None else discover_logs(conn, schema)
            body_logs: dict[str, dict[str, Any]] = {}
            for log in names:
                state = prev_body["logs"].get(log, {"last_notification_id": 0, "digest": ZERO_DIGEST.hex()})
                last = int(state["last_notification_id"])
                digest = bytes.fromhex(state["digest"])
                heads: dict[str, tuple[int, str, int]] = {}
                for n, aggregate_id, version, _topic, blob in iter_log(conn, log, last, schema=schema):
                    head = stored_head(blob)
                    digest = digest_step(digest, n, aggregate_id, version, head)
                    heads[aggregate_id] = (version, head, n)
                    last = n
                if heads:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO checkpoint_heads (log, aggregate_id, version, head, notification_id)"
                            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (log, aggregate_id) DO UPDATE SET"
                            " version = EXCLUDED.version, head = EXCLUDED.head,"
                            " notification_id = EXCLUDED.notification_id",
                            [(log, a, v, h, n) for a, (v, h, n) in heads.items()],
                        )
                body_logs[log] = {"last_notification_id": last, "digest": digest.hex()}
            for log, state in prev_body["logs"].items():
                body_logs.setdefault(log, state)
            _rows, leaves = _heads_leaves(conn)
            root = merkle_root(leaves)
            seq = (previous.id + 1) if previous else 1
            body = {
                "format": PAYLOAD_FORMAT,
                "id": seq,
                "created_at": datetime.now(UTC).isoformat(),
                "key_id": key_id(key.public_key()),
                "logs": body_logs,
                "merkle_root": root.hex(),
                "leaf_count": len(leaves),
                "previous": hashlib.sha256(previous.payload).hexdigest() if previous else None,
            }
            payload = canonical_json(body)
            signature = key.sign(payload)
            conn.execute(
                "INSERT INTO checkpoints (id, created_at, key_id, payload, signature, merkle_root, leaf_count)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (seq, body["created_at"], body["key_id"], payload, signature, body["merkle_root"], len(leaves)),
            )
    return Checkpoint(seq, payload, signature)


# --- trail bundles ----------------------------------------------------------------------------------------------


def _bundle_signing_bytes(bundle: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in bundle.items() if k != "export_signature"})


def _read_trail(database_url: str, aggregate_id: str, logs: Sequence[str] | None, schema: str) -> Any:
    """The aggregate's rows, the latest checkpoint and its heads, read in one snapshot; None if not covered."""
    with psycopg.connect(database_url) as conn:
        ensure_tables(conn)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            checkpoint = latest_checkpoint(conn)
            names = list(logs) if logs is not None else discover_logs(conn, schema)
            for log in names:
                rows = conn.execute(
                    SQL("SELECT notification_id, originator_version, topic, state FROM {}"
                        " WHERE originator_id::text = %s ORDER BY originator_version").format(
                        Identifier(schema, log)),
                    (aggregate_id,),
                ).fetchall()
                if rows:
                    break
            else:
                raise CheckpointError(f"no events for aggregate {aggregate_id}")
            if checkpoint is None:
                return None
            covered = int(checkpoint.body["logs"].get(log, {}).get("last_notification_id", 0))
            if max(int(r[0]) for r in rows) > covered:
                return None
            head_rows, leaves = _heads_leaves(conn)
    return checkpoint, log, rows, head_rows, leaves


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
    bundle["export_signature"] = base64.b64encode(key.sign(_bundle_signing_bytes(bundle))).decode()
    return bundle


def export_trail(database_url: str, data_dir: str | Path, rx_id: str, out: str | Path, *,
                 logs: Sequence[str] | None = None, schema: str = "public") -> Path:
    """Write one aggregate's events, its chain, the covering checkpoint (signed), the Merkle inclusion proof and
    the public key as one JSON file that ``verify_bundle`` checks offline. Makes a new checkpoint first when the
    latest one does not cover the aggregate's last event."""
    key = load_or_create_key(data_dir)
    aggregate_id = str(rx_id)
    snapshot = _read_trail(database_url, aggregate_id, logs, schema)
    if snapshot is None:
        create_checkpoint(database_url, data_dir, logs=logs, schema=schema)
        snapshot = _read_trail(database_url, aggregate_id, logs, schema)
        if snapshot is None:
            raise CheckpointError(f"no checkpoint covers aggregate {aggregate_id}")
    checkpoint, log, rows, head_rows, leaves = snapshot
    bundle = build_bundle(key, checkpoint, log, aggregate_id, rows, head_rows, leaves)
    path = Path(out)
    path.write_bytes(canonical_json(bundle))
    return path


@dataclass
class BundleReport:
    aggregate_id: str | None = None
    versions: int = 0
    checkpoint_id: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def _strict_b64(text: object) -> bytes:
    """Decode base64 that is exactly the canonical encoding of its bytes: no stray padding bits, no
    second spelling of the same signature, so any change to a bundle's text is a change the check sees."""
    raw = base64.b64decode(str(text), validate=True)
    if base64.b64encode(raw).decode() != text:
        raise ValueError("base64 field is not in canonical form")
    return raw


def verify_bundle(path: str | Path, trusted_public_key: bytes | Ed25519PublicKey | None = None) -> BundleReport:
    """Check a trail bundle with nothing but the file (and, ideally, a public key you already trust)."""
    from services.integrity.verify import GENESIS, event_type_of, stored_event_hash

    report = BundleReport()
    try:
        bundle = json.loads(Path(path).read_bytes())
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            report.problems.append(f"not a {BUNDLE_FORMAT} bundle")
            return report
        report.aggregate_id = str(bundle["aggregate_id"])
        public_raw = _strict_b64(bundle["public_key"])
        public_key = Ed25519PublicKey.from_public_bytes(public_raw)
        if trusted_public_key is not None:
            trusted = (trusted_public_key if isinstance(trusted_public_key, bytes)
                       else raw_public_key(trusted_public_key))
            if trusted != public_raw:
                report.problems.append("the bundle is signed with a key that is not the trusted one")
        try:
            public_key.verify(_strict_b64(bundle["export_signature"]),
                              _bundle_signing_bytes(bundle))
        except InvalidSignature:
            report.problems.append("export signature does not match the bundle's content")
        payload = str(bundle["checkpoint"]["payload"]).encode()
        try:
            public_key.verify(_strict_b64(bundle["checkpoint"]["signature"]), payload)
        except InvalidSignature:
            report.problems.append("checkpoint signature is invalid")
        body = json.loads(payload)
        report.checkpoint_id = int(body["id"])
        if body.get("format") != PAYLOAD_FORMAT:
            report.problems.append("checkpoint payload has an unknown format")

        aggregate_id, log = report.aggregate_id, str(bundle["log"])
        events = bundle["events"]
        chain = bundle["chain"]
        if not events:
            report.problems.append("the bundle holds no events")
            return report
        prev, head, last_version, last_notification = GENESIS, "", 0, 0
        for i, e in enumerate(events):
            version = int(e["version"])
            doc = json.loads(e["state"])
            where = f"{aggregate_id} v{version}"
            if version != last_version + 1:
                report.problems.append(f"{where}: follows v{last_version}")
            if str(doc.get("originator_id")) != aggregate_id or int(doc.get("originator_version", -1)) != version:
                report.problems.append(f"{where}: the event names another aggregate or version")
            recomputed = stored_event_hash(event_type_of(str(e["topic"])), doc)
            if recomputed != doc.get("hash"):
                report.problems.append(f"{where}: hash does not match the event's content")
            if doc.get("prev_hash") != prev:
                report.problems.append(f"{where}: prev_hash does not link to v{last_version}")
            if i >= len(chain) or chain[i] != {"version": version, "prev_hash": doc.get("prev_hash"),
                                               "hash": doc.get("hash")}:
                report.problems.append(f"{where}: chain entry disagrees with the event")
            if int(e["notification_id"]) <= last_notification:
                report.problems.append(f"{where}: notification ids out of order")
            prev, head, last_version = str(doc.get("hash")), str(doc.get("hash")), version
            last_notification = int(e["notification_id"])
        if len(chain) != len(events):
            report.problems.append("chain and events differ in length")
        report.versions = last_version

        leaf = bundle["proof"]["leaf"]
        if leaf != {"log": log, "aggregate_id": aggregate_id, "version": last_version, "head": head}:
            report.problems.append("the proven head is not the last event of this trail")
        root = root_from_path(leaf_hash(log, aggregate_id, last_version, head), bundle["proof"]["path"])
        if root.hex() != body.get("merkle_root"):
            report.problems.append("the inclusion proof does not lead to the checkpoint's Merkle root")
        if int(body["logs"].get(log, {}).get("last_notification_id", 0)) < last_notification:
            report.problems.append("the checkpoint does not cover the trail's last event")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        report.problems.append(f"malformed bundle: {type(exc).__name__}: {exc}")
    return report
