"""Pharmacy feeds: each routed prescription, and what later happens to it, on ``rx.pharmacy.<pharmacy_id>``
(``events.topics.pharmacy_topic``). ``rxtrail run gateway`` runs it until SIGTERM.

A pharmacy sees only prescriptions routed to it (DOMAIN.md, "Who may see what"). Its topic gets, keyed by
prescription id, one JSON ``events.contracts.FeedMessage`` per event:

- ``routed`` (``PrescriptionRouted`` to this pharmacy) with what it needs to dispense: prescription id, the
  hospital, business type (R14), diagnosis, items (drug code, name, spec, quantity, days of supply, unit price,
  catalogue category — self-pay lines are told apart at the counter, R10), validity, and the patient's
  pseudonym. Never ``patient_sealed``, never identity, never anything of another pharmacy.
- ``returned`` (``PrescriptionReturned`` by this pharmacy): it is no longer this pharmacy's; the router may
  send it elsewhere, and that pharmacy gets its own ``routed``.
- ``cancelled``, ``expired``, ``dispense_withdrawn``: later changes to a prescription routed to this pharmacy.

Prescriptions the hospital dispenses itself have no feed. Feed topics are created on demand with
``feed_partitions`` partitions (default 1: one pharmacy's traffic is small, and thousands of pharmacies times
twelve partitions would load a cluster for nothing); a pharmacy id that cannot be a Kafka topic name is sent
to ``rx.dlq`` with the reason instead (``Worker.dead_letter``), so one bad registration never stops every feed.

Delivery is at least once; consumers dedupe on the ``event_id`` header (the triggering event's id, also in the
body). The gateway is a ``Worker`` (``services.workers.base``) on the shared loop (own consumer group and schema
``gateway``), its messages keyed by the triggering event the way command workers key commands: ``apply``
folds the batch into its state (each prescription's dispensing details and current pharmacy, and ``feed``: every
event of a prescription while it is a pharmacy's, which the API's ``GET /pharmacy/feed`` reads with ``feed_page``),
publishes the messages and waits for the broker's acknowledgements, then records the published event ids in ``published``;
the loop commits state, that record and the consumed offsets in one transaction. A crash before the commit
publishes the batch again (same ``event_id`` headers); an event already recorded in ``published`` is never
sent again, even if the per-aggregate version record is rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql

from events import topics
from events.contracts import FeedMessage, FeedMessageType, FeedPrescription, feed_headers, feed_key, public_fields
from events.prescription import (
    DispenserKind,
    DispenseWithdrawn,
    PrescriptionCancelled,
    PrescriptionEvent,
    PrescriptionExpired,
    PrescriptionIssued,
    PrescriptionReturned,
    PrescriptionRouted,
)
from projections.base import Delivered, RunnerStats
from services.infra.kafka_admin import ensure_topics_async
from services.workers.base import Worker, in_log_order, run_worker

log = logging.getLogger(__name__)

NAME = "gateway"
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


# --- what goes where ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    topic: str
    message: FeedMessage

    def value(self) -> bytes:
        return self.message.model_dump_json().encode()

    def key(self) -> bytes:
        return feed_key(self.message)

    def headers(self) -> list[tuple[str, bytes]]:
        return feed_headers(self.message)


def valid_topic(name: str) -> bool:
    return bool(_TOPIC_NAME.match(name)) and name not in {".", ".."}


# --- the projection -------------------------------------------------------------------------------------------

Publish = Callable[[Sequence[Outgoing]], None]


@dataclass
class _Rx:
    details: FeedPrescription
    pharmacy_id: str | None = None


class Gateway(Worker):
    """Folds prescription events into per-pharmacy feed messages; ``publish`` must return only once the broker
    acknowledged every message (it is called inside the transaction that records them). ``stats.recorded``
    counts messages published, ``stats.replayed`` those found already published."""

    name = NAME

    def __init__(self, publish: Publish | None = None, *, feed_prefix: str = topics.PHARMACY_PREFIX) -> None:
        super().__init__()
        self.publish = publish
        self.feed_prefix = feed_prefix

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, "
                             "details jsonb NOT NULL, pharmacy_id text)").format(s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.published (event_id text PRIMARY KEY, "
                             "topic text NOT NULL, message_type text NOT NULL, "
                             "published_at timestamptz NOT NULL DEFAULT now())").format(s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.feed (pharmacy_id text, prescription_id uuid, version int, "
                             "event_id text NOT NULL, event_type text NOT NULL, at timestamptz NOT NULL, "
                             "data jsonb NOT NULL, prescription jsonb, seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, "
                             "PRIMARY KEY (pharmacy_id, prescription_id, version))").format(s))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS feed_pharmacy ON {}.feed (pharmacy_id, seq)").format(s))

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        s = sql.Identifier(schema)
        events = [d for d in in_log_order(batch) if isinstance(d.event, PrescriptionEvent)]
        if not events:
            return
        rxs = _load(conn, s, {d.aggregate_id for d in events})
        touched: set[UUID] = set()
        out: list[Outgoing] = []
        feed: list[tuple[Any, ...]] = []
        for d in events:
            e = d.event
            if isinstance(e, PrescriptionIssued):
                rxs[d.aggregate_id] = _Rx(FeedPrescription.of(e))
                touched.add(d.aggregate_id)
                continue
            rx = rxs.get(d.aggregate_id)
            if rx is None:
                if isinstance(e, _RELEVANT):
                    log.warning("gateway: %s for prescription %s whose issue it never saw; ignored", d.event_type,
                                d.aggregate_id)
                continue
            if isinstance(e, _RELEVANT):
                touched.add(d.aggregate_id)
            if isinstance(e, PrescriptionRouted):
                rx.pharmacy_id = e.dispenser_id if e.dispenser_kind is DispenserKind.PHARMACY else None
            if rx.pharmacy_id is None:
                continue
            # every event while the prescription is this pharmacy's (its routing, its own return): the HTTP feed
            feed.append((rx.pharmacy_id, d.aggregate_id, d.version, d.event_id, d.event_type, d.timestamp,
                         json.dumps(public_fields(e)),
                         rx.details.model_dump_json() if isinstance(e, PrescriptionRouted) else None))
            if isinstance(e, PrescriptionRouted):
                out.append(self._message(d, rx, "routed", basis=e.basis, prescription=rx.details))
            elif isinstance(e, PrescriptionReturned):
                out.append(self._message(d, rx, "returned", reason=e.reason))
                rx.pharmacy_id = None
            elif isinstance(e, PrescriptionCancelled):
                out.append(self._message(d, rx, "cancelled", reason=e.reason, remainder_only=e.remainder_only))
            elif isinstance(e, PrescriptionExpired):
                out.append(self._message(d, rx, "expired", remainder_only=e.remainder_only))
            elif isinstance(e, DispenseWithdrawn):
                out.append(self._message(d, rx, "dispense_withdrawn", reason=e.reason, dispense_no=e.dispense_no))
        fresh = _not_yet_published(conn, s, out)
        for _ in range(len(out) - len(fresh)):
            self.stats.counted(ok=True, replayed=True)
        if fresh:
            if self.publish is None:
                raise RuntimeError("gateway: no publisher configured")
            self.publish(fresh)
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {}.published (event_id, topic, message_type) VALUES (%s, %s, %s) "
                            "ON CONFLICT (event_id) DO NOTHING").format(s),
                    [(o.message.event_id, o.topic, o.message.message_type) for o in fresh])
            for _ in fresh:
                self.stats.counted(ok=True)
        _save(conn, s, {k: rxs[k] for k in touched if k in rxs})
        if feed:
            with conn.cursor() as cur:
                cur.executemany(sql.SQL(
                    "INSERT INTO {}.feed (pharmacy_id, prescription_id, version, event_id, event_type, at, data, "
                    "prescription) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(s), feed)

    def _message(self, d: Delivered, rx: _Rx, message_type: FeedMessageType, **fields: Any) -> Outgoing:
        if rx.pharmacy_id is None:
            raise ValueError(f"prescription {d.aggregate_id} has no pharmacy to feed")
        message = FeedMessage(message_type=message_type, event_id=d.event_id, pharmacy_id=rx.pharmacy_id,
                              prescription_id=d.aggregate_id, business_type=rx.details.business_type,
                              occurred_at=d.timestamp, **fields)
        return Outgoing(topics.pharmacy_topic(rx.pharmacy_id, self.feed_prefix), message)


_RELEVANT = (PrescriptionIssued, PrescriptionRouted, PrescriptionReturned, PrescriptionCancelled, PrescriptionExpired,
             DispenseWithdrawn)


def _load(conn: psycopg.Connection[Any], s: sql.Identifier, ids: set[UUID]) -> dict[UUID, _Rx]:
    rows = conn.execute(sql.SQL("SELECT prescription_id, details, pharmacy_id FROM {}.prescriptions "
                                "WHERE prescription_id = ANY(%s)").format(s), (list(ids),)).fetchall()
    return {r[0]: _Rx(FeedPrescription.model_validate(r[1]), r[2]) for r in rows}


def _save(conn: psycopg.Connection[Any], s: sql.Identifier, rows: dict[UUID, _Rx]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {}.prescriptions (prescription_id, details, pharmacy_id) VALUES (%s, %s, %s) "
                    "ON CONFLICT (prescription_id) DO UPDATE SET pharmacy_id = EXCLUDED.pharmacy_id").format(s),
            [(k, json.dumps(rx.details.model_dump(mode="json")), rx.pharmacy_id) for k, rx in rows.items()])


def _not_yet_published(conn: psycopg.Connection[Any], s: sql.Identifier, out: list[Outgoing]) -> list[Outgoing]:
    if not out:
        return []
    rows = conn.execute(sql.SQL("SELECT event_id FROM {}.published WHERE event_id = ANY(%s)").format(s),
                        ([o.message.event_id for o in out],)).fetchall()
    done = {r[0] for r in rows}
    return [o for o in out if o.message.event_id not in done]


def feed_page(conn: psycopg.Connection[Any], schema: str, pharmacy_id: str, after: int, limit: int
              ) -> list[dict[str, Any]]:
    """The pharmacy's feed as HTTP serves it: every event of a prescription while it is routed to this pharmacy
    (its routing, what follows, its own return), after the cursor ``after`` (the ``seq`` of a row), oldest first;
    ``data`` through ``events.contracts.public_fields``, ``prescription`` (on a routing) a ``FeedPrescription`` —
    the same filters as the Kafka feed."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT seq, prescription_id, version, event_type, at, data, prescription FROM {}.feed "
                            "WHERE pharmacy_id = %s AND seq > %s ORDER BY seq LIMIT %s").format(sql.Identifier(schema)),
                    (pharmacy_id, after, limit))
        return cur.fetchall()


# --- publishing -------------------------------------------------------------------------------------------------


class FeedPublisher:
    """Sends feed messages from the projection's worker thread through one producer on the event loop.

    ``__call__`` blocks until every message is acknowledged; topics are created on first use. A message whose
    topic cannot exist goes to the dead-letter topic through ``worker.dead_letter``.
    """

    def __init__(self, bootstrap: str, loop: asyncio.AbstractEventLoop, worker: Worker, *,
                 dlq_topic: str = topics.DLQ, feed_partitions: int = 1, send_timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.loop = loop
        self.worker = worker
        self.dlq_topic = dlq_topic
        self.feed_partitions = feed_partitions
        self.send_timeout_s = send_timeout_s
        self.producer: Any = None
        self._known: set[str] = set()

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    def __call__(self, messages: Sequence[Outgoing]) -> None:
        asyncio.run_coroutine_threadsafe(self.send(messages), self.loop).result()

    async def send(self, messages: Sequence[Outgoing]) -> None:
        new = [o.topic for o in messages if valid_topic(o.topic) and o.topic not in self._known]
        if new:
            await ensure_topics_async(self.bootstrap, new, partitions=self.feed_partitions)
            self._known.update(new)
        pending = []
        for o in messages:
            if valid_topic(o.topic):
                pending.append(await self.producer.send(o.topic, value=o.value(), key=o.key(), headers=o.headers()))
                continue
            dead = self.worker.dead_letter(
                o.value(), o.key(), o.headers(),
                error=f"pharmacy id {o.message.pharmacy_id!r} cannot be a Kafka topic name ({o.topic!r}); "
                      f"{o.message.message_type} for prescription {o.message.prescription_id}")
            pending.append(await self.producer.send(self.dlq_topic, value=dead.value, key=dead.key,
                                                    headers=dead.headers))
        await asyncio.wait_for(asyncio.gather(*pending), self.send_timeout_s)


# --- composition root -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    database_url: str
    bootstrap: str
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DLQ
    group_id: str = "rxtrail.gateway"
    schema: str = NAME
    feed_prefix: str = topics.PHARMACY_PREFIX
    feed_partitions: int = 1
    partitions: int = 12
    max_records: int = 500


async def run_gateway(config: GatewayConfig, stop: asyncio.Event, *, idle_timeout_s: float | None = None,
                      gateway: Gateway | None = None) -> Gateway:
    """Feed pharmacies until ``stop`` is set (or nothing arrived for ``idle_timeout_s``); returns the gateway."""
    gateway = gateway or Gateway(feed_prefix=config.feed_prefix)
    publisher = FeedPublisher(config.bootstrap, asyncio.get_running_loop(), gateway, dlq_topic=config.dlq_topic,
                              feed_partitions=config.feed_partitions)
    gateway.publish = publisher
    await publisher.start()
    try:
        stats: RunnerStats = await run_worker(
            gateway, config.database_url, config.bootstrap, stop, topic=config.topic, dlq_topic=config.dlq_topic,
            group_id=config.group_id, schema=config.schema, partitions=config.partitions,
            max_records=config.max_records, idle_timeout_s=idle_timeout_s)
    finally:
        await publisher.stop()
    log.info("gateway: stopped after %d events (%d duplicates); published %d feed messages",
             stats.applied, stats.duplicates, gateway.stats.recorded)
    return gateway
