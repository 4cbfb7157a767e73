"""Kafka intake: hospitals and pharmacies send the same commands as the HTTP API, as JSON, in batches.

Topics (DESIGN.md, Topics): ``rx.inbound.<hospital_id>`` — the sender is that hospital; ``rx.inbound.pharmacy``
— the sender is the pharmacy the command names (``dispenser_id``, or a ``pharmacy_id`` message header for the
commands that name none). The same gate as HTTP (``services.application.access``) decides what a sender may
do and see.

``Intake`` is a ``CommandWorker`` (``services.workers.base``). Per batch: decode every message; refuse what the
gate refuses; apply the rest with ``issue_batch`` (``RxTrail.apply_batch``: outcomes are stored in the events'
transaction); publish refusals to ``rx.rejections`` (``events.contracts.Rejection``) and undecodable input to
``rx.dlq`` (``Worker.dead_letter``); only then commit the offsets and count the batch in ``stats``. A crash
anywhere before the commit redelivers the batch, and that is harmless: every command is keyed by the message
that carried it (the sender's ``command_id``, else the message's topic/partition/offset, scoped to the
sender), so a redelivered command returns its first outcome and records nothing new.

``rxtrail run intake`` runs one intake worker until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import ConsumerRecord
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy
from pydantic import ValidationError

from events import topics
from events.contracts import DLQ_ERROR_MAX, Rejection, record_source
from events.envelope import header
from services.adapters.asyncapi import INBOUND_DESCRIPTION, INBOUND_TITLE, INTAKE_GROUP, build_broker, declare_publishers
from services.application import RxTrail
from services.application import commands as c
from services.application.access import Gate, Party, PartyKind, find_nul, scoped_command_id
from services.application.unit_of_work import UnitOfWork
from services.domain.encounter import Encounter
from services.domain.errors import DomainError, NotFound
from services.domain.prescription import Prescription
from services.workers.base import CommandWorker, DeadLetter, WorkerStats

log = logging.getLogger("rxtrail.inbound")

PHARMACY_HEADER = "pharmacy_id"
REFERENCE_MAX = 200
"""A command_id is at most this long (``Command.command_id``); a rejection echoes at most this much of one."""
KIND_MAX = 64


@dataclass
class Item:
    record: ConsumerRecord[Any, Any]
    sender: Party | None = None
    reference: str | None = None
    command: c.Command | None = None
    dead: str | None = None
    refusal: Rejection | None = None

    @property
    def source(self) -> str:
        return record_source(self.record.topic, self.record.partition, self.record.offset)


def _key_text(record: ConsumerRecord[Any, Any]) -> str | None:
    key = record.key
    if isinstance(key, bytes):
        return key.decode(errors="replace")
    return None if key is None else str(key)


class Intake(CommandWorker):
    """Turns a batch of records into outcomes; knows nothing of faststream (tests drive it directly too).
    ``stats.ok`` counts commands applied (first time or replayed), ``stats.rejected`` every refusal."""

    name = "intake"

    def __init__(self, application: RxTrail, gate: Gate) -> None:
        super().__init__(application)
        self.gate = gate

    @property
    def consumer(self) -> str:
        return INTAKE_GROUP

    # --- deciding (blocking: runs in a worker thread) ---------------------------------------------
    def decode(self, record: ConsumerRecord[Any, Any]) -> Item:
        """One message's verdict: a command, a refusal or a dead letter. Never raises: whatever one message does
        (nesting too deep for the parser, a value too large, anything unforeseen) is that message's dead letter,
        and the intake moves on."""
        try:
            return self._decode(record)
        except Exception as exc:
            log.exception("intake: could not decode %s", record_source(record.topic, record.partition, record.offset))
            return Item(record, dead=f"could not decode: {type(exc).__name__}: {exc}")

    def _decode(self, record: ConsumerRecord[Any, Any]) -> Item:
        item = Item(record)
        try:
            raw = json.loads(record.value) if record.value is not None else None
        except (UnicodeDecodeError, ValueError) as exc:
            item.dead = f"value is not JSON: {exc}"
            return item
        except RecursionError:
            item.dead = "value is not JSON this intake reads: nested too deeply"
            return item
        if not isinstance(raw, dict):
            item.dead = "value is not a JSON object"
            return item
        reference = raw.get("command_id") if isinstance(raw.get("command_id"), str) else None
        item.reference = reference or _key_text(record)
        kind = raw.get("kind") if isinstance(raw.get("kind"), str) else None
        if (where := find_nul(raw)) is not None:
            item.refusal = self._refusal(item, kind, "ValidationError",
                                         f"{'.'.join(map(str, where))}: text must not contain NUL characters")
            return item
        try:
            command = c.parse_command(raw)
        except ArithmeticError:  # decimal.InvalidOperation: an amount beyond Decimal's precision
            item.refusal = self._refusal(item, kind, "ValidationError", "a number is out of range")
            return item
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                               for e in exc.errors(include_input=False))
            item.refusal = self._refusal(item, kind, "ValidationError", reason)
            return item
        item.sender = self.sender(record, command)
        if item.sender is None:
            item.refusal = self._refusal(item, kind, "UnknownSender",
                                         "rx.inbound.pharmacy needs dispenser_id or a pharmacy_id header")
            return item
        local = reference or f"kafka:{item.source}"
        item.command = command.model_copy(update={"command_id": scoped_command_id(item.sender, local)})
        return item

    @staticmethod
    def sender(record: ConsumerRecord[Any, Any], command: c.Command) -> Party | None:
        suffix = record.topic.removeprefix(topics.INBOUND_PREFIX)
        if record.topic == topics.INBOUND_PHARMACY:
            pharmacy_id = getattr(command, "dispenser_id", None) or header(record.headers, PHARMACY_HEADER)
            return Party(PartyKind.PHARMACY, pharmacy_id) if pharmacy_id else None
        return Party(PartyKind.HOSPITAL, suffix) if suffix else None

    def _refusal(self, item: Item, kind: str | None, error: str, reason: str, rule: str | None = None,
                 ids: dict[str, str] | None = None) -> Rejection:
        # Cut what the sender wrote to the bounds a valid command has, so a refusal always fits a message.
        reference = None if item.reference is None else item.reference[:REFERENCE_MAX]
        return Rejection(command_id=reference, command_kind=None if kind is None else kind[:KIND_MAX],
                         sender=str(item.sender)[:REFERENCE_MAX] if item.sender else None, error=error, rule=rule,
                         reason=reason[:DLQ_ERROR_MAX], ids=ids or {}, source=item.source)

    def decide(self, records: Sequence[ConsumerRecord[Any, Any]], counts: WorkerStats | None = None) -> list[Item]:
        """Check and apply in message order. Commands go to ``apply_batch`` in runs; a run is cut short when a
        check cannot find something an earlier command of the same batch may be creating (a visit and the
        prescription issued from it, a routing and the pharmacy's acceptance), so checks see what came before.
        Outcomes are counted in ``counts`` (default: ``stats``)."""
        counts = self.stats if counts is None else counts
        items = [self.decode(r) for r in records]
        unit = self._gate_unit(items)  # what the checks read, for the whole batch in one round trip
        run: list[Item] = []
        for item in items:
            if item.command is None or item.sender is None:
                continue
            try:
                try:
                    self.gate.check(item.sender, item.command, unit)
                except NotFound:
                    if not run:
                        raise
                    self._apply(run, counts)
                    run = []
                    unit = None  # the store holds what the run created: later checks read it afresh
                    self.gate.check(item.sender, item.command)
            except DomainError as exc:
                item.refusal = self._refusal(item, getattr(item.command, "kind", None), type(exc).__name__,
                                             getattr(exc, "reason", None) or str(exc),
                                             ids=dict(getattr(exc, "ids", {}) or {}))
                item.command = None
                continue
            run.append(item)
        self._apply(run, counts)
        return items

    def _gate_unit(self, items: Sequence[Item]) -> UnitOfWork | None:
        """The visits and prescriptions the gate checks read, loaded in one round trip (the checks read them one
        by one otherwise); None when no command needs one."""
        encounters, prescriptions = [], []
        for item in items:
            if isinstance(item.command, c.IssuePrescription):
                encounters.append(item.command.encounter_id)
            if isinstance(rx := getattr(item.command, "prescription_id", None), UUID):
                prescriptions.append(rx)
        if not encounters and not prescriptions:
            return None
        unit = UnitOfWork(self.gate.store)
        unit.prefetch_all({Encounter: encounters, Prescription: prescriptions})
        return unit

    def _apply(self, run: Sequence[Item], counts: WorkerStats) -> None:
        if not run:
            return
        outcomes = self.issue_batch([i.command for i in run if i.command is not None], counts)
        for item, outcome in zip(run, outcomes, strict=True):
            if not outcome.ok:
                item.refusal = self._refusal(item, getattr(item.command, "kind", None), outcome.error or "Refused",
                                             outcome.reason or "refused", rule=outcome.rule_id, ids=outcome.ids)

    # --- answering --------------------------------------------------------------------------------
    async def process(self, records: Sequence[ConsumerRecord[Any, Any]], broker: KafkaBroker) -> None:
        """Decide, apply and answer one batch; raises if anything could not be stored or published. The batch is
        counted in ``stats`` once everything is answered."""
        counts = WorkerStats()
        items = await asyncio.to_thread(self.decide, records, counts)
        sends = []
        for item in items:
            if item.dead is not None:
                dead: DeadLetter = self.dead_letter(item.record.value, item.record.key, item.record.headers,
                                                    error=item.dead, source=item.source, counts=counts)
                sends.append(broker.publish(dead.value, topic=topics.DLQ, key=dead.key, headers=dead.header_map()))
            elif item.refusal is not None:
                key = (item.refusal.command_id or "").encode() or item.record.key
                sends.append(broker.publish(item.refusal.model_dump_json().encode(), topic=topics.REJECTIONS,
                                            key=key, headers={"content-type": "application/json"}))
        for item in items:
            if item.refusal is not None:
                log.info("refused %s from %s: %s %s", item.refusal.command_kind, item.refusal.sender,
                         item.refusal.error, item.refusal.rule or "")
        await asyncio.gather(*sends)
        counts.rejected += sum(i.refusal is not None and i.command is None for i in items)  # refused before issue
        counts.batches += 1
        self.stats.merge(counts)


# --- composition root ----------------------------------------------------------------------------------


@dataclass
class IntakeWorker:
    """The intake on its faststream broker; the application it was given stays the caller's to close."""

    broker: KafkaBroker
    app: FastStream
    intake: Intake

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()


def create_intake(
    application: RxTrail,
    bootstrap: str,
    *,
    group_id: str = INTAKE_GROUP,
    pattern: str = topics.INBOUND_PATTERN,
    max_records: int = 500,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
    retry_delay_s: float = 1.0,
) -> IntakeWorker:
    """The intake worker: a faststream KafkaBroker with one batch subscriber on every ``rx.inbound.*`` topic."""
    intake = Intake(application, Gate(application.store))
    broker = build_broker(bootstrap, logger=log)

    @broker.subscriber(
        pattern=pattern, group_id=group_id, batch=True, max_records=max_records, batch_timeout_ms=100,
        auto_offset_reset="earliest", ack_policy=AckPolicy.MANUAL, session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms, decoder=_raw_values, title=INBOUND_TITLE,
        description=INBOUND_DESCRIPTION,
    )
    async def on_commands(body: list[dict[str, Any]], msg: KafkaMessage) -> None:
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        try:
            await intake.process(records, broker)
        except Exception:
            intake.stats.failures += 1
            log.exception("intake batch of %d failed; rewinding to retry", len(records))
            await msg.nack()
            await asyncio.sleep(retry_delay_s)
            return
        await msg.ack()

    declare_publishers(broker)
    return IntakeWorker(broker=broker, app=FastStream(broker, logger=log), intake=intake)


async def _raw_values(msg: Any) -> list[Any]:
    """Leave decoding to ``Intake.decode`` so one malformed message cannot fail its whole batch."""
    raw = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
    return [{} for _ in raw]
