"""Copies of the signed checkpoints held outside the database, so deleting or rewriting checkpoint rows is found.

- ``rx.checkpoints`` (``events.topics.CHECKPOINTS``): every checkpoint is published once (``publish_pending``,
  after the checkpoint runner signs one); key = the logs it covers, value = ``record(checkpoint)``. ``verify``
  reads them back (``read_copies``) and compares the database's chain with them.
- a witness file (``export_checkpoints``): the JSON list of ``record``s a regulator keeps; ``verify
  --checkpoints FILE`` checks the database and the log against any earlier copy (``load_witness``).

A record is ``{"id": n, "payload": <the signed JSON, as text>, "signature": <base64>}``; copies whose
``key_id`` is not the installation's key are someone else's and are left out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from services.integrity.checkpoint import Checkpoint, all_checkpoints, canonical_json, ensure_tables

KAFKA_SOURCE = "rx.checkpoints"
WITNESS_SOURCE = "witness file"


def record(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"id": checkpoint.id, "payload": checkpoint.payload.decode(),
            "signature": base64.b64encode(checkpoint.signature).decode()}


def from_record(value: Any) -> Checkpoint:
    if not isinstance(value, dict):
        raise ValueError("a checkpoint record is a JSON object")
    payload = str(value["payload"]).encode()
    checkpoint = Checkpoint(int(value["id"]), payload, base64.b64decode(str(value["signature"]), validate=True))
    checkpoint.body  # noqa: B018 - the payload must be JSON
    return checkpoint


def message_key(checkpoint: Checkpoint) -> bytes:
    """The logs the checkpoint covers (``rxtrail_events``), after its store's name when sharded (``370100:...``)."""
    logs = ",".join(sorted(checkpoint.body.get("logs", {})))
    store = checkpoint.body.get("store")
    return (logs if store is None else f"{store}:{logs}").encode()


# --- the witness file ---------------------------------------------------------------------------------------------


def export_checkpoints(database_url: str | Sequence[str], out: str | Path) -> tuple[Path, int]:
    """Write every checkpoint the database holds (each database's, for several: region shards), as a JSON list of
    records, to ``out``."""
    checkpoints: list[Checkpoint] = []
    for url in [database_url] if isinstance(database_url, str) else database_url:
        with psycopg.connect(url) as conn:
            ensure_tables(conn)
            checkpoints += all_checkpoints(conn)
    path = Path(out)
    path.write_text(json.dumps([record(c) for c in checkpoints], indent=1, ensure_ascii=False) + "\n")
    return path, len(checkpoints)


def load_witness(path: str | Path) -> list[Checkpoint]:
    """The checkpoints in a witness file (a JSON list of records, or ``{"checkpoints": [...]}``)."""
    doc = json.loads(Path(path).read_text())
    items = doc.get("checkpoints") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ValueError(f"{path} is not a list of checkpoints")
    return [from_record(item) for item in items]


# --- rx.checkpoints ----------------------------------------------------------------------------------------------


async def publish_pending(database_url: str, bootstrap: str, topic: str, timeout_s: float = 30.0) -> int:
    """Publish every checkpoint not yet on ``topic`` (in id order) and mark it published; how many were sent.
    Gives up after ``timeout_s`` (the unpublished ones go with the next call); OSError at once when no broker
    accepts a connection."""
    await asyncio.to_thread(reachable, bootstrap)
    return await asyncio.wait_for(_publish_pending(database_url, bootstrap, topic), timeout_s)


async def _publish_pending(database_url: str, bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaProducer

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT id, payload, signature FROM checkpoints WHERE published_at IS NULL"
                                 " ORDER BY id")
        pending = [Checkpoint(int(i), bytes(p), bytes(s)) for i, p, s in await cur.fetchall()]
        if not pending:
            return 0
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=15_000)
        await producer.start()
        try:
            for c in pending:
                await producer.send_and_wait(topic, canonical_json(record(c)), key=message_key(c))
                await conn.execute("UPDATE checkpoints SET published_at = now() WHERE id = %s", (c.id,))
        finally:
            await producer.stop()
    return len(pending)


async def read_copies(bootstrap: str, topic: str, key_id: str | None = None) -> list[Checkpoint]:
    """The checkpoints on ``topic`` in the order they were published (``key_id``: only this key's)."""
    from services.integrity.verify import read_topic

    copies = []
    for m in await read_topic(bootstrap, topic):
        try:
            c = from_record(json.loads(m.value))
        except (ValueError, KeyError, TypeError):
            continue
        if key_id is None or c.body.get("key_id") == key_id:
            copies.append(c)
    return copies


def reachable(bootstrap: str, timeout_s: float = 2.0) -> None:
    """Fail fast (OSError) when no bootstrap server accepts a TCP connection."""
    last: OSError | None = None
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s).close()
            return
        except OSError as exc:
            last = exc
    raise last or OSError(f"no bootstrap server in {bootstrap!r}")


def read_copies_or_note(bootstrap: str, topic: str, key_id: str | None, timeout_s: float,
                        notes: list[str]) -> Sequence[Checkpoint]:
    """``read_copies`` within ``timeout_s``; when Kafka cannot be read, a note and no copies."""
    from services.integrity.verify import run_coroutine

    async def bounded() -> list[Checkpoint]:
        return await asyncio.wait_for(read_copies(bootstrap, topic, key_id), timeout_s)

    try:
        reachable(bootstrap)
        return run_coroutine(bounded())
    except Exception as exc:  # an unreachable broker must not fail the check of the database
        notes.append(f"checkpoint copies on {topic} not compared: Kafka at {bootstrap} not readable "
                     f"({type(exc).__name__})")
        return []
