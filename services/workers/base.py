"""Workers that turn events into commands (router, settlement): idempotent by construction (DESIGN.md, Flow).

A command worker is a ``projections.base.Projection`` — its state tables are the projection — whose ``apply``
also issues commands. It runs on the shared consumer loop (``ProjectionConsumer``): its own consumer group
on ``rx.events``, its own PostgreSQL schema, per-aggregate version dedupe, offsets stored in that schema.

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
  state, so a replay asks under the same keys however its batches fall.
- Decide from the events (and the state built from them), never from wall-clock time or chance, so a
  redelivered batch asks for the same things. Where a redelivery might still decide differently (batch
  boundaries moved), the first recorded outcome of each key wins, and the aggregates' own rules (a
  prescription is routed or settled once per state) refuse anything else.
- A refusal comes back as an ``Outcome`` (status "rejected"), not an exception. An exception (the database is
  down) aborts the batch, which is then redelivered.

``run_worker`` runs one worker on the shared loop; ``run_until_signalled`` is the body of a ``__main__``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from projections.base import Delivered, ProjectionConsumer, RunnerStats
from services.application.commands import Command
from services.application.outcomes import Outcome

log = logging.getLogger(__name__)


def command_key(worker: str, event_id: str, *qualifiers: str) -> str:
    """``"<worker>:<event_id>[:<qualifier>...]"``: the idempotency key of a command caused by one event."""
    if not event_id:
        raise ValueError("a command key needs the triggering event's id")
    return ":".join((worker, event_id, *qualifiers))


class CommandHandler(Protocol):
    """What a worker needs of the write side (``services.application.RxTrail`` is one)."""

    def handle(self, command: Command) -> Outcome: ...


@dataclass
class WorkerStats:
    issued: int = 0
    """Commands sent to the application (including those answered from the idempotency store)."""
    ok: int = 0
    rejected: int = 0
    replayed: int = 0
    """Commands whose key was already recorded: the first outcome came back and nothing new was recorded."""


class CommandWorker:
    """Base of an event → command worker. Subclasses set ``name`` and implement ``create_tables`` and ``apply``,
    calling ``self.issue(command)`` from ``apply`` (see the module docstring for the ordering)."""

    name: str = ""

    def __init__(self, app: CommandHandler) -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set a name")
        self.app = app
        self.commands = WorkerStats()

    def key(self, event_id: str, *qualifiers: str) -> str:
        return command_key(self.name, event_id, *qualifiers)

    def issue(self, command: Command) -> Outcome:
        if command.command_id is None:
            raise ValueError(f"{self.name}: {type(command).__name__} without a command_id would not be idempotent")
        outcome = self.app.handle(command)
        self.commands.issued += 1
        self.commands.replayed += outcome.replayed
        if outcome.ok:
            self.commands.ok += 1
        else:
            self.commands.rejected += 1
        return outcome

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        """Subclass hook (the Projection protocol): the worker's own state tables."""
        raise NotImplementedError(f"{type(self).__name__} must define create_tables")

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        """Subclass hook: update state, then issue keyed commands, before the loop commits the batch."""
        raise NotImplementedError(f"{type(self).__name__} must define apply")


def in_log_order(batch: Sequence[Delivered]) -> list[Delivered]:
    """The batch in the event store's global order (notification id) where known, else as delivered.

    A batch mixes partitions; this brings a pharmacy designated before a prescription was approved ahead of
    that approval when both arrive together. Each aggregate's own order is kept either way.
    """
    return sorted(batch, key=lambda d: d.notification_id if d.notification_id is not None else float("inf"))


async def run_worker(projection: Any, database_url: str, bootstrap: str, stop: asyncio.Event, *,
                     topic: str = "rx.events", dlq_topic: str = "rx.dlq", group_id: str = "", schema: str = "",
                     partitions: int = 12, max_records: int = 500, idle_timeout_s: float | None = None
                     ) -> RunnerStats:
    """Run one worker on the shared consumer loop until ``stop`` is set (or idle for ``idle_timeout_s``)."""
    from services.infra.kafka_admin import ensure_topics_async

    await ensure_topics_async(bootstrap, [topic, dlq_topic], partitions=partitions)
    consumer = ProjectionConsumer(projection, database_url, bootstrap, schema=schema, topic=topic,
                                  dlq_topic=dlq_topic, group_id=group_id or f"rxtrail.{projection.name}",
                                  max_records=max_records)
    log.info("%s: consuming %s as group %s into schema %s", projection.name, topic, consumer.group_id,
             consumer.schema)
    return await consumer.run(stop, idle_timeout_s)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[object]]) -> int:
    """Run ``main(stop)`` until SIGTERM or SIGINT sets ``stop``; the exit code for ``python -m``."""

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(body())
    return 0


def configure_logging() -> None:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
