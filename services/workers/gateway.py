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
``gateway``), its messages keyed by the triggering event the way command workers key commands: ``apply`` folds
the batch into its state (``services.adapters.gateway_state``: each prescription's dispensing details and current
pharmacy, and ``feed``: every event of a prescription while it is a pharmacy's, which the API's
``GET /pharmacy/feed`` reads), publishes the messages and waits for the broker's acknowledgements, then records
the published event ids in ``published``; the loop commits state, that record and the consumed offsets in one
transaction. A crash before the commit publishes the batch again (same ``event_id`` headers); an event already
recorded in ``published`` is never sent again, even if the per-aggregate version record is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaProducer

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
from projections.base import Delivered, MissingEvents, RunnerStats
from services.adapters import gateway_state as state
from services.infra.kafka_admin import ensure_topics_async
from services.workers.base import Worker, in_log_order, run_worker

log = logging.getLogger(__name__)

NAME = state.SCHEMA
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
        state.create_tables(conn, schema)

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        events = [d for d in in_log_order(batch) if isinstance(d.event, PrescriptionEvent)]
        if not events:
            return
        rxs = state.load(conn, schema, {d.aggregate_id for d in events})
        touched: set[UUID] = set()
        out: list[Outgoing] = []
        feed: list[state.FeedRow] = []
        for d in events:
            e = d.event
            if isinstance(e, PrescriptionIssued):
                rxs[d.aggregate_id] = state.FedPrescription(FeedPrescription.of(e))
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
            feed.append(state.FeedRow(rx.pharmacy_id, d.aggregate_id, d.version, d.event_id, d.event_type,
                                      d.timestamp, public_fields(e),
                                      rx.details if isinstance(e, PrescriptionRouted) else None))
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
        done = state.published(conn, schema, [o.message.event_id for o in out])
        fresh = [o for o in out if o.message.event_id not in done]
        for _ in range(len(out) - len(fresh)):
            self.stats.counted(ok=True, replayed=True)
        if fresh:
            if self.publish is None:
                raise RuntimeError("gateway: no publisher configured")
            self.publish(fresh)
            state.record_published(conn, schema,
                                   [(o.message.event_id, o.topic, o.message.message_type) for o in fresh])
            for _ in fresh:
                self.stats.counted(ok=True)
        state.save(conn, schema, {k: rxs[k] for k in touched if k in rxs})
        state.append_feed(conn, schema, feed)

    def _message(self, d: Delivered, rx: state.FedPrescription, message_type: FeedMessageType,
                 **fields: Any) -> Outgoing:
        if rx.pharmacy_id is None:
            raise ValueError(f"prescription {d.aggregate_id} has no pharmacy to feed")
        message = FeedMessage(message_type=message_type, event_id=d.event_id, pharmacy_id=rx.pharmacy_id,
                              prescription_id=d.aggregate_id, business_type=rx.details.business_type,
                              occurred_at=d.timestamp, **fields)
        return Outgoing(topics.pharmacy_topic(rx.pharmacy_id, self.feed_prefix), message)


_RELEVANT = (PrescriptionIssued, PrescriptionRouted, PrescriptionReturned, PrescriptionCancelled, PrescriptionExpired,
             DispenseWithdrawn)


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
    missing: MissingEvents | None = field(default=None, compare=False)
    """Where version gaps are read (bootstrap: every store's when sharded); None = the store at database_url."""


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
            max_records=config.max_records, idle_timeout_s=idle_timeout_s, missing=config.missing)
    finally:
        await publisher.stop()
    log.info("gateway: stopped after %d events (%d duplicates); published %d feed messages",
             stats.applied, stats.duplicates, gateway.stats.recorded)
    return gateway
