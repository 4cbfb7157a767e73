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
- the previous checkpoint's payload hash (``previous``), so checkpoints chain too;
- with region shards (``RXTRAIL_SHARDS``), ``store``: which event store the chain belongs to (``global`` or a pooling
  region). Each store keeps its own chain in its own database; the copies of all of them share ``rx.checkpoints``
  and a witness file, and ``belongs_to`` sorts them back. Without shards the field is absent (the format before).

Tables: ``checkpoints`` (one row per checkpoint, the exact signed bytes and the signature; ``published_at`` once
its copy is on ``rx.checkpoints``, see ``services.integrity.witness``), ``checkpoint_heads`` (the heads as of the
latest checkpoint, updated in the same transaction) and ``checkpoint_ledger`` (every covered event's digest input:
notification id, aggregate id, version, hash). The ledger is authenticated by the signed digests themselves (its
running digest must reproduce them), so when the log no longer matches a checkpoint the verifier names each
rewritten, removed or inserted event by stream and version.
Keys: ``<data_dir>/checkpoint_ed25519.pem`` (private, 0600, generated once) and ``.pub.pem``.

Deleting checkpoint rows is found three ways: copies held outside the database (``rx.checkpoints``, a witness
file a regulator exported) that the database no longer holds or holds differently; gaps in the chain's ids; and
a ledger or heads table that records events past the latest remaining checkpoint.
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
    (
        "CREATE TABLE IF NOT EXISTS checkpoint_ledger ("
        " log text NOT NULL, notification_id bigint NOT NULL, aggregate_id text NOT NULL, version bigint NOT NULL,"
        " head text NOT NULL, PRIMARY KEY (log, notification_id))"
    ),
    "ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS published_at timestamptz",
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

    def boundary(self, log: str) -> int | None:
        """The last notification id of ``log`` this checkpoint covers (None: it does not cover the log)."""
        state = self.body.get("logs", {}).get(log)
        return None if state is None else int(state["last_notification_id"])

    def __str__(self) -> str:
        body = self.body
        root = str(body.get("merkle_root", ""))[:12]
        return f"#{self.id} at {body.get('created_at')} ({body.get('leaf_count')} streams, root {root})"

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
                      schema: str = "public", store: str | None = None) -> Checkpoint:
    """Sign the current head of every log. Incremental: reads only events after the previous checkpoint.
    ``store``: the shard's name when the write side is sharded (signed into the payload)."""
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
                ledger: list[tuple[str, int, str, int, str]] = []
                for n, aggregate_id, version, _topic, state in iter_log(conn, log, last, schema=schema):
                    head = stored_head(state)
                    digest = digest_step(digest, n, aggregate_id, version, head)
                    heads[aggregate_id] = (version, head, n)
                    ledger.append((log, n, aggregate_id, version, head))
                    last = n
                if ledger:
                    with conn.cursor() as cur, cur.copy(
                            "COPY checkpoint_ledger (log, notification_id, aggregate_id, version, head)"
                            " FROM STDIN") as copy:
                        for entry in ledger:
                            copy.write_row(entry)
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
            if store is not None:
                body["store"] = store
            payload = canonical_json(body)
            signature = key.sign(payload)
            conn.execute(
                "INSERT INTO checkpoints (id, created_at, key_id, payload, signature, merkle_root, leaf_count)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (seq, body["created_at"], body["key_id"], payload, signature, body["merkle_root"], len(leaves)),
            )
    return Checkpoint(seq, payload, signature)


def belongs_to(checkpoint: Checkpoint, store: str, *, global_store: str = "global") -> bool:
    """Whether ``checkpoint`` is of ``store``'s chain. A checkpoint without ``store`` was signed before the write
    side was sharded: it belongs to the store that was then the only one, the global store."""
    return checkpoint.body.get("store", global_store) == store


# --- checking checkpoints against the log -----------------------------------------------------------------------


Copy = tuple[str, Checkpoint]
"""A copy of a checkpoint held outside the database, with where it came from ("rx.checkpoints", "witness file")."""


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def verify_checkpoints(conn: psycopg.Connection[Any], logs: Sequence[str], report: Report, *,
                       data_dir: str | Path | None = None, schema: str = "public",
                       copies: Sequence[Copy] = ()) -> None:
    """Check the checkpoint chain and the log against it; findings go into ``report``.

    The chain is the database's checkpoints, reconciled with ``copies`` held elsewhere (a copy the database no
    longer holds, or holds differently, is a finding, and the copy is what the log is checked against). Each
    checkpoint's signature (with the data dir's key) and link to the one before are checked; each log is read
    once, comparing the running digest at every checkpoint's boundary. Where it differs, the ledger (when its own
    digest still matches the signed one) names each changed event; else the heads table names each changed stream
    (when it still matches the latest Merkle root). The latest checkpoint's Merkle root is recomputed from the
    heads as of its position, and the events after it are counted as not yet covered."""
    stored = all_checkpoints(conn) if _has_table(conn, "checkpoints") else []
    public_key = load_public_key(data_dir) if data_dir is not None else None
    chain = reconcile(stored, copies, public_key, report)
    report.checkpoints = len(chain)
    check_chain(chain, public_key, report)
    latest = chain[-1] if chain else None
    if latest is not None:
        report.latest_checkpoint, report.latest_checkpoint_at = latest.id, latest.body.get("created_at")
    named: set[tuple[str, str]] = set()
    heads: dict[tuple[str, str], tuple[int, str]] = {}
    uncovered_streams: set[tuple[str, str]] = set()
    unnamed: list[Finding] = []
    for log in logs:
        _check_log(conn, log, chain, report, heads, uncovered_streams, named, unnamed, schema)
    report.uncovered_streams = len(uncovered_streams)
    _check_left_overs(conn, chain, report)
    leaves = [leaf_hash(lg, a, v, h) for (lg, a), (v, h) in sorted(heads.items())]
    if latest is not None and merkle_root(leaves).hex() != latest.body.get("merkle_root"):
        if not _explain_heads(conn, latest, heads, named, report) and not named:
            unnamed.append(_finding(latest.id, "the aggregates' heads differ from the latest checkpoint's Merkle root"))
    if not named:  # the log differs but neither the ledger nor the heads can say where
        report.findings.extend(unnamed)


def reconcile(stored: Sequence[Checkpoint], copies: Sequence[Copy], public_key: Ed25519PublicKey | None,
               report: Report) -> list[Checkpoint]:
    """The chain to check the log against: the database's checkpoints, where a copy held elsewhere disagrees
    or is missing from the database, the copy (the first one seen of each id)."""
    chain = {c.id: c for c in stored}
    first: dict[int, Copy] = {}
    for where, c in copies:
        if public_key is not None and not c.verify_signature(public_key):
            report.findings.append(_finding(c.id, f"the copy from {where} is not signed by the data dir's key"))
            continue
        report.checkpoint_copies[where] = report.checkpoint_copies.get(where, 0) + 1
        seen = first.get(c.id)
        if seen is None:
            first[c.id] = (where, c)
        elif seen[1].payload != c.payload:
            report.findings.append(_finding(c.id, f"{where} holds two different checkpoints #{c.id}: the checkpoints "
                                                  "were deleted and made again"))
    for cid, (where, c) in sorted(first.items()):
        mine = chain.get(cid)
        if mine is None:
            report.findings.append(_finding(cid, f"deleted: the copy from {where} is not in the database"))
        elif mine.payload != c.payload or mine.signature != c.signature:
            report.findings.append(_finding(cid, f"altered: the database's checkpoint differs from the copy from "
                                                 f"{where}"))
        chain[cid] = c
    return [chain[i] for i in sorted(chain)]


def check_chain(chain: Sequence[Checkpoint], public_key: Ed25519PublicKey | None, report: Report) -> None:
    previous: Checkpoint | None = None
    for c in chain:
        if public_key is not None and not c.verify_signature(public_key):
            report.findings.append(_finding(c.id, "signature does not verify with the key in the data dir"))
        if c.body.get("id") != c.id:
            report.findings.append(_finding(c.id, f"the row is #{c.id} but the signed payload says "
                                                  f"#{c.body.get('id')}"))
        expected_id = previous.id + 1 if previous is not None else 1
        if c.id > expected_id:
            missing = f"#{expected_id}" if c.id == expected_id + 1 else f"#{expected_id}..#{c.id - 1}"
            report.findings.append(_finding(c.id, f"checkpoint(s) {missing} before it are missing (deleted)"))
        elif previous is None or previous.id == c.id - 1:
            expected_prev = hashlib.sha256(previous.payload).hexdigest() if previous is not None else None
            if c.body.get("previous") != expected_prev:
                report.findings.append(_finding(c.id, "does not chain to the checkpoint before it"))
        previous = c


def _bounds(chain: Sequence[Checkpoint], log: str) -> list[tuple[int, Checkpoint]]:
    """(boundary, the first checkpoint that signed the log up to it), in log order."""
    bounds: dict[int, Checkpoint] = {}
    for c in chain:
        b = c.boundary(log)
        if b is not None:
            bounds.setdefault(b, c)
    return sorted(bounds.items(), key=lambda item: item[0])


def _signed_digest(bound: tuple[int, Checkpoint], log: str) -> str:
    return str(bound[1].body["logs"][log]["digest"])


def _check_log(conn: psycopg.Connection[Any], log: str, chain: Sequence[Checkpoint], report: Report,
               heads: dict[tuple[str, str], tuple[int, str]], uncovered_streams: set[tuple[str, str]],
               named: set[tuple[str, str]], unnamed: list[Finding], schema: str) -> None:
    bounds = _bounds(chain, log)
    last = bounds[-1][0] if bounds else 0
    digest, i, mismatch = ZERO_DIGEST, 0, None
    for n, aggregate_id, version, _topic, state in iter_log(conn, log, 0, None, schema):
        while i < len(bounds) and n > bounds[i][0]:
            if mismatch is None and digest.hex() != _signed_digest(bounds[i], log):
                mismatch = i
            i += 1
        if n > last:
            report.uncovered_events += 1
            uncovered_streams.add((log, aggregate_id))
            continue
        head = stored_head(state)
        digest = digest_step(digest, n, aggregate_id, version, head)
        heads[(log, aggregate_id)] = (version, head)
    while i < len(bounds):
        if mismatch is None and digest.hex() != _signed_digest(bounds[i], log):
            mismatch = i
        i += 1
    if mismatch is None:
        return
    found = _diff_with_ledger(conn, log, bounds, mismatch, report, schema)
    named.update((log, f.aggregate_id) for f in found)
    if not found:
        position, c = bounds[mismatch]
        unnamed.append(_finding(
            c.id, f"the log {log} up to notification id {position} differs from what checkpoint #{c.id} signed "
                  "(events before that point were changed, removed or added)"))


def _diff_with_ledger(conn: psycopg.Connection[Any], log: str, bounds: Sequence[tuple[int, Checkpoint]],
                      mismatch: int, report: Report, schema: str) -> list[Finding]:
    """Name each event that differs from what the checkpoints signed, from the ledger, as far as the ledger
    still reproduces the signed digests. Empty when the ledger cannot vouch for the changed range."""
    if not _has_table(conn, "checkpoint_ledger"):
        return []
    lo = bounds[mismatch - 1][0] if mismatch else 0
    digest, i, authentic, whole = ZERO_DIGEST, 0, -1, True
    signed: dict[int, tuple[str, int, str]] = {}
    rows = conn.execute("SELECT notification_id, aggregate_id, version, head FROM checkpoint_ledger"
                        " WHERE log = %s AND notification_id <= %s ORDER BY notification_id",
                        (log, bounds[-1][0])).fetchall()
    for n, aggregate_id, version, head in rows:
        while whole and i < len(bounds) and n > bounds[i][0]:
            whole = digest.hex() == _signed_digest(bounds[i], log)
            authentic, i = (i, i + 1) if whole else (authentic, i)
        if not whole:
            break
        digest = digest_step(digest, int(n), str(aggregate_id), int(version), str(head))
        if n > lo:
            signed[int(n)] = (str(aggregate_id), int(version), str(head))
    while whole and i < len(bounds) and digest.hex() == _signed_digest(bounds[i], log):
        authentic, i = i, i + 1
    if authentic < mismatch:
        return []
    hi = bounds[authentic][0]
    signed = {n: e for n, e in signed.items() if n <= hi}
    boundary_of = {c.id: b for b, c in bounds}

    def signer(n: int) -> int:
        return next(c.id for b, c in bounds if n <= b)

    found: list[Finding] = []
    present: set[int] = set()
    for n, aggregate_id, version, _topic, state in iter_log(conn, log, lo, hi, schema):
        present.add(n)
        expected = signed.get(n)
        cid = signer(n)
        if expected is None:
            found.append(Finding("checkpoint", aggregate_id, version,
                                 f"inserted: checkpoint #{cid} signed the log up to notification id "
                                 f"{boundary_of[cid]} without this event (notification id {n})", checkpoint=cid))
        elif expected[:2] != (aggregate_id, version):
            found.append(Finding("checkpoint", aggregate_id, version,
                                 f"moved: checkpoint #{cid} signed notification id {n} as {expected[0]} "
                                 f"v{expected[1]}", checkpoint=cid))
        elif expected[2] != stored_head(state):
            found.append(Finding("checkpoint", aggregate_id, version,
                                 f"rewritten: the event differs from what checkpoint #{cid} signed", checkpoint=cid))
    for n, (aggregate_id, version, _head) in sorted(signed.items()):
        if n not in present:
            found.append(Finding("checkpoint", aggregate_id, version,
                                 f"removed: checkpoint #{signer(n)} signed this event (notification id {n}) and "
                                 "the log no longer holds it", checkpoint=signer(n)))
    report.findings.extend(found)
    return found


def _check_left_overs(conn: psycopg.Connection[Any], chain: Sequence[Checkpoint], report: Report) -> None:
    """The ledger and heads tables are written in the same transaction as a checkpoint: if they record events
    past the latest checkpoint the database holds, later checkpoints were deleted."""
    if not _has_table(conn, "checkpoint_ledger"):
        return
    latest = chain[-1] if chain else None
    for table in ("checkpoint_ledger", "checkpoint_heads"):
        for log, top in conn.execute(f"SELECT log, max(notification_id) FROM {table} GROUP BY log").fetchall():
            covered = latest.boundary(str(log)) if latest is not None else None
            if covered is None or int(top) > covered:
                where = f"checkpoint #{latest.id} covers up to {covered or 0}" if latest else "no checkpoint is left"
                report.findings.append(Finding(
                    "checkpoint", "", 0, f"{table} records {log} up to notification id {top} but {where}: "
                    "later checkpoints were deleted", checkpoint=latest.id if latest else None))


def _explain_heads(conn: psycopg.Connection[Any], latest: Checkpoint, heads: dict[tuple[str, str], tuple[int, str]],
                   named: set[tuple[str, str]], report: Report) -> bool:
    """The latest Merkle root does not match the heads recomputed from the log: name the streams whose head
    changed (into ``named``), from the heads table when it still reproduces the signed root. False when the
    heads table cannot vouch for them."""
    recorded, leaves = heads_and_leaves(conn) if _has_table(conn, "checkpoint_heads") else ([], [])
    if merkle_root(leaves).hex() != latest.body.get("merkle_root"):
        return False
    signed = {(lg, a): (v, h) for lg, a, v, h in recorded}
    for key in sorted(set(signed) | set(heads)):
        if key in named or signed.get(key) == heads.get(key):
            continue
        log, aggregate_id = key
        if key not in heads:
            version, reason = signed[key][0], "removed: the stream's events are gone from the log"
        elif key not in signed:
            version, reason = heads[key][0], "inserted: the stream is not among the heads the checkpoint signed"
        else:
            version = signed[key][0]
            reason = (f"rewritten: its head v{version} is not the one checkpoint #{latest.id} signed"
                      if heads[key][0] == version else f"its head is v{heads[key][0]}, checkpoint #{latest.id} "
                                                         f"signed v{version}")
        report.findings.append(Finding("checkpoint", aggregate_id, version, f"{reason} ({log})",
                                       checkpoint=latest.id))
        named.add(key)
    return True


def _finding(checkpoint_id: int, reason: str) -> Finding:
    return Finding("checkpoint", "", 0, reason, checkpoint=checkpoint_id)
