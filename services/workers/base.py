"""The one base of rxtrail's workers: consume, turn what arrives into commands (or messages) keyed by the
triggering event, record. Idempotent by construction (DESIGN.md, Flow).

Who uses it:

- ``Worker``: a name, one ``WorkerStats`` and ``key(event_id, *qualifiers)``. The gateway is a ``Worker``: it
  turns events into feed messages keyed by the triggering event and records what it published.
- ``CommandWorker(Worker)``: plus the write side (``app``) and ``issue``/``issue_batch``/``recall``, which count
  every answer in ``stats``. The router, the settlement worker, the expiry worker and the Kafka intake are
  command workers.
- ``dead_letter``: the one DLQ path for a worker that gives up on a message (``events.contracts`` headers).

Workers on ``rx.events`` (router, settlement, gateway, expiry) also implement the ``projections.base.Projection``
hooks (``create_tables``, ``apply``) — their state tables are the projection — and run on the shared consumer
loop (``run_worker``): own consumer group, own PostgreSQL schema, per-aggregate version dedupe, offsets stored
in that schema. The intake consumes ``rx.inbound.*`` through faststream and records its outcomes with
``issue_batch`` before the offsets are acknowledged.

Ordering: commands first, then the commit. ``apply`` runs inside the transaction that will also store the
consumed offsets. A worker

1. folds the batch into its state tables (not yet committed),
2. issues its commands synchronously through ``CommandWorker.issue``, each keyed by the event that
   triggered it (``command_key``), and
3. returns; the loop then commits state and offsets together.

If the process dies after 2 and before 3, neither state nor offsets were committed: the batch is delivered
again, the worker decides again, and every command it re-issues carries the same key, so the application
answers with the first outcome and records nothing new. The opposite order (commit, then issue) would lose
the command for good, because the committed offset says the event was handled.

Rules for a worker:

- Key every command by its triggering event: ``command_key(worker, event_id, *qualifiers)``; qualifiers tell
  apart several commands one event may cause (a second choice, one command per affected aggregate). ``issue``
  refuses a command without a key. A retry prompted by a later event (a pharmacy designated after the
  approval it could serve) stays keyed by the original trigger plus an attempt number kept in the worker's
  state, so a replay asks under the same keys however its batches fall. A command prompted by time, not by
  an event (expiry), is keyed by what it acts on (``expiry:<prescription id>``).
- Decide from the events (and the state built from them), never from wall-clock time or chance, so a
  redelivered batch asks for the same things. Where a redelivery might still decide differently (batch
  boundaries moved), the first recorded outcome of each key wins, and the aggregates' own rules (a
  prescription is routed or settled once per state) refuse anything else.
- A refusal comes back as an ``Outcome`` (status "rejected"), not an exception. An exception (the database is
  down) aborts the batch, which is then redelivered.

``run_worker`` runs one worker on the shared loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from events import topics
from events.contracts import dead_letter_headers, dead_letter_value
from events.envelope import Headers
from projections.base import Delivered, MissingEvents, Projection, ProjectionConsumer, RunnerStats
from services.adapters.missing_events import StoreEvents
from services.application.commands import Command
from services.application.outcomes import Outcome
from services.infra.kafka_admin import ensure_topics_async

log = logging.getLogger(__name__)


def command_key(worker: str, event_id: str, *qualifiers: str) -> str:
    """``"<worker>:<event_id>[:<qualifier>...]"``: the idempotency key of a command caused by one event."""
    if not event_id:
        raise ValueError("a command key needs the triggering event's id")
    return ":".join((worker, event_id, *qualifiers))


class CommandHandler(Protocol):
    """What a command worker needs of the write side (``services.application.RxTrail`` is one)."""

    def handle(self, command: Command) -> Outcome: ...

    def apply_batch(self, commands: Sequence[Command]) -> list[Outcome]: ...

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, Outcome]: ...


@dataclass
class WorkerStats:
    """What a worker did, the same counters for every worker."""

    batches: int = 0
    """Batches handled to the end (recorded and acknowledged)."""
    issued: int = 0
    """Commands (or messages) asked for, each under its key: sent, or answered from what is already recorded."""
    ok: int = 0
    """Accepted: recorded now or earlier (``replayed``)."""
    recorded: int = 0
    """Accepted and recorded now (the work done: a routing, a settlement, a feed message published)."""
    replayed: int = 0
    """Answered by the first outcome recorded under the key: nothing new recorded."""
    rejected: int = 0
    """Refused (by the write side, the access gate, or as malformed input)."""
    skipped: int = 0
    """Triggers that called for nothing (logged with the reason)."""
    dead_lettered: int = 0
    """Messages sent to the dead-letter topic."""
    failures: int = 0
    """Batches (or expiry sweeps) that failed and are tried again (a batch is rewound and delivered again)."""

    def count(self, outcome: Outcome) -> None:
        """Count one answer of the write side."""
        self.counted(ok=outcome.ok, replayed=outcome.replayed)

    def counted(self, *, ok: bool, replayed: bool = False) -> None:
        """Count one command or message by how it ended."""
        self.issued += 1
        self.replayed += replayed
        if ok:
            self.ok += 1
            self.recorded += not replayed
        else:
            self.rejected += 1

    def merge(self, other: WorkerStats) -> None:
        """Add another tally (a batch counted apart until it is done)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Worker:
    """Base of every worker: a ``name`` (the prefix of its keys), one ``WorkerStats``, ``key``."""

    name: str = ""

    def __init__(self) -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set a name")
        self.stats = WorkerStats()

    def key(self, event_id: str, *qualifiers: str) -> str:
        return command_key(self.name, event_id, *qualifiers)

    @property
    def consumer(self) -> str:
        """Who the worker is in dead letters (``dlq_consumer``)."""
        return f"rxtrail.{self.name}"

    def dead_letter(self, value: bytes | None, key: bytes | None, headers: Headers, *, error: str,
                    source: str | None = None, counts: WorkerStats | None = None) -> DeadLetter:
        """Give up on a message: what to send to the dead-letter topic (counted in ``counts``, default ``stats``;
        logged)."""
        (self.stats if counts is None else counts).dead_lettered += 1
        log.warning("%s: gave up on %s: %s; sent to the dead-letter topic", self.name, source or "a message",
                    error[:500])
        carried, extra = dead_letter_value(value, error=error, source=source)  # a reference when too large
        return DeadLetter(carried, key,
                          dead_letter_headers(headers, error=error, consumer=self.consumer, source=source) + extra)


@dataclass(frozen=True)
class DeadLetter:
    """A message a worker gave up on: the original value and key; the original headers plus who gave up, why and
    where it was read (``events.contracts``). Sent to ``events.topics.DLQ`` unless the worker was told otherwise."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]

    def header_map(self) -> dict[str, str]:
        """The headers as text, for clients that take a mapping (faststream)."""
        return {k: v.decode(errors="replace") for k, v in self.headers}


class CommandWorker(Worker):
    """Base of a worker that sends commands to the write side. Workers on ``rx.events`` call ``issue`` from
    ``apply`` (see the module docstring for the ordering)."""

    def __init__(self, app: CommandHandler) -> None:
        super().__init__()
        self.app = app

    def issue(self, command: Command) -> Outcome:
        self._require_key(command)
        outcome = self.app.handle(command)
        self.stats.count(outcome)
        return outcome

    def issue_batch(self, commands: Sequence[Command], counts: WorkerStats | None = None) -> list[Outcome]:
        """Issue keyed commands in one transaction of the write side (``RxTrail.apply_batch``), in order; the
        answers are counted in ``counts`` (default ``stats``)."""
        for command in commands:
            self._require_key(command)
        outcomes = self.app.apply_batch(commands) if commands else []
        for outcome in outcomes:
            (self.stats if counts is None else counts).count(outcome)
        return outcomes

    def recall(self, keys: Sequence[str]) -> dict[str, Outcome]:
        """The outcomes already recorded under these keys (each counted as a replayed answer): a worker asks
        before building a command it need not build again."""
        found = self.app.recorded_outcomes(keys)
        for outcome in found.values():
            self.stats.count(outcome)
        return found

    def _require_key(self, command: Command) -> None:
        if command.command_id is None:
            raise ValueError(f"{self.name}: {type(command).__name__} without a command_id would not be idempotent")


def in_log_order(batch: Sequence[Delivered]) -> list[Delivered]:
    """The batch in the event store's global order (notification id) where known, else as delivered.

    A batch mixes partitions; this brings a pharmacy designated before a prescription was approved ahead of
    that approval when both arrive together. Each aggregate's own order is kept either way.
    """
    return sorted(batch, key=lambda d: d.notification_id if d.notification_id is not None else float("inf"))


async def run_worker(projection: Projection, database_url: str, bootstrap: str, stop: asyncio.Event, *,
                     topic: str = topics.EVENTS, dlq_topic: str = topics.DLQ, group_id: str = "", schema: str = "",
                     partitions: int = 12, max_records: int = 500, idle_timeout_s: float | None = None,
                     missing: MissingEvents | None = None) -> RunnerStats:
    """Run one worker on the shared consumer loop until ``stop`` is set (or idle for ``idle_timeout_s``).
    ``missing``: where versions the topic skipped are read (default: the event store at ``database_url``)."""
    await ensure_topics_async(bootstrap, [topic, dlq_topic], partitions=partitions)
    consumer = ProjectionConsumer(projection, database_url, bootstrap, schema=schema, topic=topic,
                                  dlq_topic=dlq_topic, group_id=group_id or f"rxtrail.{projection.name}",
                                  max_records=max_records, missing=missing or StoreEvents(database_url))
    log.info("%s: consuming %s as group %s into schema %s", projection.name, topic, consumer.group_id,
             consumer.schema)
    return await consumer.run(stop, idle_timeout_s)
