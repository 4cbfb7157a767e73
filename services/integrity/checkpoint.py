"""Signed checkpoints over the whole event log, and checking them against it.

A checkpoint signs (Ed25519) a small JSON payload:

- per event table ("log"): the last notification id covered and a running digest over every event in log order,
  ``d_n = sha256(d_{n-1} || id(8 bytes) || aggregate id || 0x1f || version || 0x1f || event hash)``, d_0 = 32 zero
  bytes. An event's hash is its stored ``hash`` field (the chain's own claim, whose content is checked by
  ``services.integrity.chain``) or, for an event without one, sha256 of its stored bytes;
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

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.adapters.event_log import discover_logs, iter_log
from services.integrity.chain import Finding, Report

PAYLOAD_FORMAT = "rxtrail.checkpoint/1"
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
            conn.execute(statement)


def latest_checkpoint(conn: psycopg.Connection[Any]) -> Checkpoint | None:
    row = conn.execute("SELECT id, payload, signature FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else Checkpoint(int(row[0]), bytes(row[1]), bytes(row[2]))


def all_checkpoints(conn: psycopg.Connection[Any]) -> list[Checkpoint]:
    rows = conn.execute("SELECT id, payload, signature FROM checkpoints ORDER BY id").fetchall()
    return [Checkpoint(int(i), bytes(p), bytes(s)) for i, p, s in rows]


def heads_and_leaves(conn: psycopg.Connection[Any]) -> tuple[list[tuple[str, str, int, str]], list[bytes]]:
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
                for n, aggregate_id, version, _topic, state in iter_log(conn, log, last, schema=schema):
                    head = stored_head(state)
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
            _rows, leaves = heads_and_leaves(conn)
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




# --- checking checkpoints against the log -----------------------------------------------------------------------


def verify_checkpoints(conn: psycopg.Connection[Any], logs: Sequence[str], report: Report, *,
                       data_dir: str | Path | None = None, schema: str = "public") -> None:
    """Check every stored checkpoint (signature with the data dir's key, chaining) and replay each log once,
    comparing the running digest at every checkpoint's boundary; the latest checkpoint's Merkle root is
    recomputed from the heads as of its position. Findings go into ``report``."""
    exists = conn.execute("SELECT to_regclass('checkpoints') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return
    checkpoints = all_checkpoints(conn)
    report.checkpoints = len(checkpoints)
    if not checkpoints:
        return
    public_key = load_public_key(data_dir) if data_dir is not None else None
    previous: bytes | None = None
    for c in checkpoints:
        if public_key is not None and not c.verify_signature(public_key):
            report.findings.append(_finding(c.id, "signature does not verify with the key in the data dir"))
        expected_prev = hashlib.sha256(previous).hexdigest() if previous is not None else None
        if c.body.get("previous") != expected_prev:
            report.findings.append(_finding(c.id, "does not chain to the checkpoint before it"))
        previous = c.payload
    latest = checkpoints[-1].body
    heads: dict[tuple[str, str], tuple[int, str]] = {}
    for log in logs:
        bounds = sorted({int(c.body["logs"][log]["last_notification_id"]): c for c in checkpoints
                         if log in c.body["logs"]}.items())
        if not bounds:
            continue
        digest, upto, i = ZERO_DIGEST, bounds[-1][0], 0
        broken = False
        for n, aggregate_id, version, _topic, state in iter_log(conn, log, 0, upto, schema):
            while i < len(bounds) and n > bounds[i][0]:
                if not _digest_matches(digest, bounds[i], log, report):
                    broken = True
                    break
                i += 1
            if broken:
                break
            head = stored_head(state)
            digest = digest_step(digest, n, aggregate_id, version, head)
            heads[(log, aggregate_id)] = (version, head)
        while not broken and i < len(bounds):
            if not _digest_matches(digest, bounds[i], log, report):
                broken = True
            i += 1
    leaves = [leaf_hash(lg, a, v, h) for (lg, a), (v, h) in sorted(heads.items())]
    if merkle_root(leaves).hex() != latest["merkle_root"]:
        report.findings.append(_finding(int(latest["id"]),
                                        "the aggregates' heads differ from the latest checkpoint's Merkle root"))


def _finding(checkpoint_id: int, reason: str) -> Finding:
    return Finding("checkpoint", "", 0, reason, checkpoint=checkpoint_id)


def _digest_matches(digest: bytes, bound: tuple[int, Checkpoint], log: str, report: Report) -> bool:
    position, c = bound
    if digest.hex() == c.body["logs"][log]["digest"]:
        return True
    report.findings.append(_finding(
        c.id, f"the log {log} up to notification id {position} differs from what checkpoint #{c.id} signed "
              "(events before that point were changed, removed or added)"))
    return False
