"""The relay's own bookkeeping in PostgreSQL, beside the event store.

``relay_position(name, log, position, ...)``: per relay name and event table (one eventsourcing application's
notification log), the last notification id the broker acknowledged.

``relay_broker(name, topic, generation, next_offsets, published, ...)``: what this relay knows the broker holds:
per partition ``[floor, next]``: ``next`` is one past the highest offset the broker acknowledged, ``floor`` the
lowest offset acknowledged in our last batch to that partition. A later ack below ``next``, or a reported end
offset below ``floor + 1``, means the partition lost data. (Tansu reports the base offset of the last record
batch + 1 as a partition's end offset, not the high watermark; ``floor + 1`` is a bound both brokers respect.)
``generation`` changes whenever positions are reset (republish, broker data loss), so a running relay notices
a reset made by another process and never overwrites it with an older position.

``relay_broker.marks``: which of *our* records sit where, so a loss stays visible when other relays write the same
partitions (region shards: one relay per event store, one topic). An end offset alone cannot tell: another relay's
records, or its republish after the same loss, lift a truncated partition back above our floors. ``floor``: per
partition, the event id of the record at our floor offset; ``checked``: per partition ``[offset, event id]`` of a
floor record the last broker check read back and found in place. The relay reads both back at each check
(``core.Relay._check_broker``); ``checked`` only moves at a check, so a loss between two checks is seen at the
next one even when our later batches moved the floors onto records written after the loss.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

from psycopg import AsyncConnection
from psycopg.sql import SQL, Identifier, Literal

CONTROL_CHANNEL = "rxtrail_relay_control"

CREATE = (
    (
        "CREATE TABLE IF NOT EXISTS relay_position ("
        " name text NOT NULL, log text NOT NULL, position bigint NOT NULL DEFAULT 0,"
        " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, log))"
    ),
    (
        "CREATE TABLE IF NOT EXISTS relay_broker ("
        " name text PRIMARY KEY, topic text NOT NULL, generation bigint NOT NULL DEFAULT 0,"
        " next_offsets jsonb NOT NULL DEFAULT '{}'::jsonb, published bigint NOT NULL DEFAULT 0,"
        " updated_at timestamptz NOT NULL DEFAULT now(), marks jsonb NOT NULL DEFAULT '{}'::jsonb)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS relay_dead_letters ("
        " name text NOT NULL, log text NOT NULL, notification_id bigint NOT NULL, aggregate_id text NOT NULL,"
        " version int NOT NULL, size int NOT NULL, error text NOT NULL, at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (name, log, notification_id))"
    ),
    (  # relay_broker as created before ``marks`` existed: add it (no table lock when it is there already)
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'relay_broker' AND column_name = 'marks') THEN"
        " ALTER TABLE relay_broker ADD COLUMN marks jsonb NOT NULL DEFAULT '{}'::jsonb; END IF; END $$"
    ),
)


def lock_key(name: str) -> int:
    """A stable advisory-lock key per relay name (one active relay per name)."""
    return zlib.crc32(f"rxtrail.relay:{name}".encode()) - 2**31


@dataclass
class RelayState:
    generation: int
    positions: dict[str, int]
    next_offsets: dict[int, int] = field(default_factory=dict)
    floors: dict[int, int] = field(default_factory=dict)
    published: int = 0
    floor_ids: dict[int, str] = field(default_factory=dict)
    """Per partition: the event id of our record at ``floors[p]``."""
    checked: dict[int, tuple[int, str]] = field(default_factory=dict)
    """Per partition: (offset, event id) of our record the last broker check found in place."""


async def ensure_tables(conn: AsyncConnection) -> None:
    # Concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog; serialise it.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("__ddl__"),))
        for statement in CREATE:
            await conn.execute(statement)  # type: ignore[arg-type]


async def load_state(conn: AsyncConnection, name: str, topic: str, logs: list[str]) -> RelayState:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO relay_broker (name, topic) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, topic)
        )
        for log in logs:
            await conn.execute(
                "INSERT INTO relay_position (name, log) VALUES (%s, %s) ON CONFLICT DO NOTHING", (name, log)
            )
        cur = await conn.execute(
            "SELECT generation, next_offsets, published, topic, marks FROM relay_broker WHERE name = %s", (name,)
        )
        row = await cur.fetchone()
        assert row is not None
        generation, offsets, published, stored_topic, marks = row
        if stored_topic != topic:
            # A relay renamed onto another topic knows nothing about the new topic's contents.
            await conn.execute(
                "UPDATE relay_broker SET topic = %s, next_offsets = '{}'::jsonb, published = 0, marks = '{}'::jsonb,"
                " generation = generation + 1, updated_at = now() WHERE name = %s",
                (topic, name),
            )
            offsets, published, generation, marks = {}, 0, generation + 1, {}
        cur = await conn.execute("SELECT log, position FROM relay_position WHERE name = %s", (name,))
        positions = {log: int(pos) for log, pos in await cur.fetchall()}
    offsets = dict(offsets)
    return RelayState(
        generation=int(generation),
        positions={log: positions.get(log, 0) for log in logs},
        next_offsets={int(p): int(v[1]) for p, v in offsets.items()},
        floors={int(p): int(v[0]) for p, v in offsets.items()},
        published=int(published),
        floor_ids={int(p): str(i) for p, i in (marks or {}).get("floor", {}).items()},
        checked={int(p): (int(v[0]), str(v[1])) for p, v in (marks or {}).get("checked", {}).items()},
    )


async def current_generation(conn: AsyncConnection, name: str) -> int | None:
    cur = await conn.execute("SELECT generation FROM relay_broker WHERE name = %s", (name,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


class GenerationChanged(Exception):
    """Positions were reset by someone else (republish) since this relay loaded them."""


async def commit_batch(
    conn: AsyncConnection,
    name: str,
    log: str,
    position: int,
    generation: int,
    next_offsets: dict[int, int],
    floors: dict[int, int],
    published_delta: int,
    floor_ids: dict[int, str] | None = None,
) -> None:
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT generation FROM relay_broker WHERE name = %s FOR UPDATE", (name,)
        )
        row = await cur.fetchone()
        if row is None or int(row[0]) != generation:
            raise GenerationChanged
        await conn.execute(
            "UPDATE relay_position SET position = %s, updated_at = now() WHERE name = %s AND log = %s",
            (position, name, log),
        )
        await conn.execute(
            "UPDATE relay_broker SET next_offsets = %s::jsonb, published = published + %s, updated_at = now(),"
            " marks = jsonb_set(marks, '{floor}', %s::jsonb) WHERE name = %s",
            (json.dumps({str(p): [floors.get(p, o - 1), o] for p, o in sorted(next_offsets.items())}),
             published_delta, json.dumps({str(p): i for p, i in sorted((floor_ids or {}).items())}), name),
        )


async def save_checked(conn: AsyncConnection, name: str, generation: int, checked: dict[int, tuple[int, str]]
                       ) -> bool:
    """Record the floor records a broker check found in place (``RelayState.checked``), unless positions were
    reset since (another generation). Returns whether it was recorded."""
    cur = await conn.execute(
        "UPDATE relay_broker SET marks = jsonb_set(marks, '{checked}', %s::jsonb), updated_at = now()"
        " WHERE name = %s AND generation = %s RETURNING 1",
        (json.dumps({str(p): [o, i] for p, (o, i) in sorted(checked.items())}), name, generation),
    )
    return await cur.fetchone() is not None


async def reset_positions(
    conn: AsyncConnection, name: str, from_notification_id: int, *, broker_lost_data: bool
) -> int:
    """Set every log's position of relay ``name`` to ``from_notification_id``; returns the new generation.

    After broker data loss the partition offsets we knew are void too.
    """
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO relay_broker (name, topic) VALUES (%s, '') ON CONFLICT (name) DO NOTHING", (name,)
        )
        await conn.execute(
            "UPDATE relay_position SET position = %s, updated_at = now() WHERE name = %s",
            (from_notification_id, name),
        )
        extra = ", next_offsets = '{}'::jsonb, published = 0, marks = '{}'::jsonb" if broker_lost_data else ""
        cur = await conn.execute(
            SQL("UPDATE relay_broker SET generation = generation + 1, updated_at = now(){}"
                " WHERE name = %s RETURNING generation").format(SQL(extra)),
            (name,),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(SQL("NOTIFY {}, {}").format(Identifier(CONTROL_CHANNEL), Literal(name)))
    return int(row[0])


# --- dead letters: stored events the broker refused (too large); the relay moved past them ------------------


@dataclass(frozen=True)
class RelayDeadLetter:
    name: str
    log: str
    notification_id: int
    aggregate_id: str
    version: int
    size: int
    error: str


async def record_dead_letter(conn: AsyncConnection, letter: RelayDeadLetter) -> None:
    await conn.execute(
        "INSERT INTO relay_dead_letters (name, log, notification_id, aggregate_id, version, size, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (letter.name, letter.log, letter.notification_id, letter.aggregate_id, letter.version, letter.size,
         letter.error[:2000]),
    )


async def dead_letters(conn: AsyncConnection, name: str | None = None, limit: int = 100) -> list[RelayDeadLetter]:
    """The relay's dead letters, newest first (``/health`` and ``rxtrail status`` report their count)."""
    cur = await conn.execute(
        "SELECT name, log, notification_id, aggregate_id, version, size, error FROM relay_dead_letters"
        " WHERE %(name)s::text IS NULL OR name = %(name)s ORDER BY at DESC LIMIT %(limit)s",
        {"name": name, "limit": limit},
    )
    return [RelayDeadLetter(*row) for row in await cur.fetchall()]
