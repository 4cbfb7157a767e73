"""How rxtrail events sit in eventsourcing's PostgreSQL tables, and the command-outcome table beside them.

Contract with the relay: a stored event's ``topic`` is the event class topic (``events.prescription:
PrescriptionIssued``) and its ``state`` is the plain UTF-8 JSON of ``event.model_dump(mode="json")`` — no
compression, no cipher (personal fields are already sealed inside the event by the application).

Command outcomes (idempotency keys) are written by ``OutcomeRecorder.insert_events`` inside the very transaction
that inserts the events: ``app.save(*aggregates, command_outcomes=[...])`` passes the keyword through
``ProcessingEvent`` → ``EventStore.put`` → ``insert_events``. So an outcome exists if and only if its events
do, and a second writer of the same command id fails the whole transaction on the outcome table's primary key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast
from uuid import UUID

import pydantic_core
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    InterfaceError,
    Mapper,
    MapperDeserialisationError,
    OperationalError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import get_topic, resolve_topic, retry
from psycopg.sql import SQL, Identifier
from pydantic import BaseModel

from events import from_json
from services.application.ports import OutcomeRow


class PydanticJSONTranscoder(Transcoder):
    """Plain JSON bytes. Pydantic models go through ``model_dump_json`` (the JSON of ``model_dump(mode="json")``
    produced in Rust); anything else must already be JSON-able."""

    def encode(self, obj: Any) -> bytes:
        if isinstance(obj, BaseModel):
            return obj.model_dump_json().encode()
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes) -> Any:
        return pydantic_core.from_json(data)


class PydanticMapper(Mapper[Any]):
    """Events and snapshots are frozen pydantic models (``events.base.Envelope``); older schema versions are
    upcast on the way in, and the stored form is kept on the event so its hash is checked as written."""

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        if not isinstance(domain_event, BaseModel):
            raise TypeError(f"rxtrail stores pydantic events only, not {type(domain_event).__name__}")
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=self.transcoder.encode(domain_event),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        try:
            cls = resolve_topic(stored_event.topic)
            data: dict[str, Any] = self.transcoder.decode(stored_event.state)
            return cast(DomainEventProtocol[Any], from_json(cls.__name__, data))
        except Exception as exc:
            raise MapperDeserialisationError(
                f"cannot load stored event {stored_event.originator_id} v{stored_event.originator_version} "
                f"({stored_event.topic}): {exc}"
            ) from exc


class OutcomeRecorder(PostgresApplicationRecorder):
    """eventsourcing's application recorder plus ``<app>_command_outcomes``, written in the events' transaction."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        if datastore.enable_db_functions:
            raise ValueError("OutcomeRecorder writes outcomes in the insert transaction: set "
                             "POSTGRES_ENABLE_DB_FUNCTIONS off")
        super().__init__(datastore, events_table_name=events_table_name)
        self.outcomes_table_name = events_table_name.removesuffix("_events") + "_command_outcomes"
        self.check_identifier_length(self.outcomes_table_name)
        table = Identifier(self.datastore.schema, self.outcomes_table_name)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                "command_id text PRIMARY KEY, "
                "command_type text NOT NULL, "
                "status text NOT NULL, "
                "outcome jsonb NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT now())"
            ).format(table=table)
        )
        self._insert_outcome = SQL(
            "INSERT INTO {table} (command_id, command_type, status, outcome) VALUES (%s, %s, %s, %s::jsonb)"
        ).format(table=table)
        self._select_many = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state FROM {table} e "
            "JOIN unnest(%s::uuid[], %s::bigint[]) AS k(id, after) "
            "ON e.originator_id = k.id AND e.originator_version > k.after "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(table=Identifier(self.datastore.schema, self.events_table_name))
        self._select_outcomes = SQL("SELECT command_id, outcome::text AS outcome FROM {table} "
                                    "WHERE command_id = ANY(%s)").format(table=table)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """eventsourcing's insert — the same statements under the same ``LOCK TABLE … EXCLUSIVE`` — in ONE round trip:
        BEGIN, the command outcomes, the lock, NOTIFY, the events' INSERT and COMMIT are pipelined and synced once
        (eventsourcing syncs after the INSERT and again at COMMIT, and the outcomes took a third). A duplicate event
        version, derived id or command id fails the INSERT, the transaction rolls back, and ``IntegrityError`` is
        raised as before (``datastore.get_connection`` maps psycopg's UniqueViolation)."""
        outcomes: Sequence[OutcomeRow] = kwargs.pop("command_outcomes", ())
        if not stored_events and not outcomes:
            return None
        with self.datastore.get_connection() as conn, conn.cursor() as inserted:
            with conn.pipeline(), conn.transaction():
                if outcomes:
                    with conn.cursor() as curs:
                        curs.executemany(self._insert_outcome,
                                         [(o.command_id, o.command_type, o.status, o.outcome) for o in outcomes])
                if stored_events:
                    self._insert_stored_events(inserted, stored_events, **kwargs)  # lock, NOTIFY, INSERT … RETURNING
            if not stored_events:
                return None
            return self._fetch_ids_after_insert_events(inserted, stored_events, **kwargs)

    def select_events_many(
        self, originator_ids: Sequence[UUID], after: Mapping[UUID, int] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        """The stored events of several aggregates in one round trip, by aggregate, in version order: every event,
        or for an id in ``after`` only those after that version (the caller holds the aggregate up to it)."""
        found: dict[UUID, list[StoredEvent]] = {}
        if not originator_ids:
            return found
        ids = list(originator_ids)
        versions = [after.get(i, 0) for i in ids] if after else [0] * len(ids)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_many, (ids, versions), prepare=True)
            for row in curs.fetchall():
                found.setdefault(row["originator_id"], []).append(
                    StoredEvent(
                        originator_id=row["originator_id"],
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                )
        return found

    def select_outcomes(self, command_ids: Sequence[str]) -> dict[str, str]:
        """Outcome JSON by command id, for the ids that have one."""
        if not command_ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_outcomes, (list(command_ids),), prepare=True)
            return {row["command_id"]: row["outcome"] for row in curs.fetchall()}
