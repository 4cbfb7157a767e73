"""The read side the API serves from — the relay, the traceability projection and the gateway — for one test database,
built by the composition root's builders and run in a background thread while a synchronous test drives the API.

    with read_side(database_url, kafka_bootstrap) as settings:
        client = TestClient(create_app(settings, application=app))

Everything gets names of its own (events topic, relay, consumer groups, feed prefix), so modules running at once
never share a consumer group. The API's reads are eventually consistent: before reading what a write should show,
wait until the read side has caught up with the write side (``wait_caught_up``, a polling wait), never sleep.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from services.adapters.store import EVENTS_TABLE
from services.bootstrap import gateway_config, relay_config, run_projections
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import GatewaySection, ProjectionsSection, RelaySection, Settings
from services.relay.core import run_relay
from services.workers.gateway import run_gateway
from tests.support.ids import unique_id, unique_topic
from tests.support.waits import wait_until

PARTITIONS = 3
SCHEMAS = ("traceability", "gateway")


def read_side_settings(database_url: str, bootstrap: str, **overrides: Any) -> Settings:
    """Settings for one database's read side, with names of its own."""
    return Settings(database_url=database_url, kafka_bootstrap=bootstrap, events_topic=unique_topic("api.events"),
                    partitions=PARTITIONS, relay=RelaySection(name=unique_id("relay"), poll_interval_s=0.1),
                    projections=ProjectionsSection(group_prefix=unique_id("api.projection")),
                    gateway=GatewaySection(group_id=unique_id("api.gateway"),
                                           feed_prefix=unique_topic("api.pharmacy") + "."), **overrides)


async def run_read_side(settings: Settings, stop: asyncio.Event, projections: tuple[str, ...] = ("traceability",)
                        ) -> None:
    """The relay, the projections (the traceability one unless told) and the gateway until ``stop`` is set (or one
    of them fails)."""
    bootstrap = settings.resolved_kafka_bootstrap()
    await ensure_topics_async(bootstrap, [settings.events_topic, settings.dlq_topic], partitions=settings.partitions)
    tasks = [asyncio.create_task(run_relay(relay_config(settings), stop)),
             asyncio.create_task(run_projections(list(projections), settings, stop)),
             asyncio.create_task(run_gateway(gateway_config(settings), stop))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextmanager
def read_side(database_url: str, bootstrap: str, projections: tuple[str, ...] = ("traceability",),
              **overrides: Any) -> Iterator[Settings]:
    """Run the read side in a thread of its own for the ``with`` block; yields the settings to build the API with."""
    settings = read_side_settings(database_url, bootstrap, **overrides)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def body() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_read_side(settings, stop, projections))
        except BaseException as exc:  # reported when the block ends
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=body, name="read-side", daemon=True)
    thread.start()
    try:
        yield settings
    finally:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop already ended (a part failed)
            pass
        thread.join(60)
    if failure:
        raise RuntimeError("the read side failed") from failure[0]


def behind(database_url: str, schemas: tuple[str, ...] = SCHEMAS) -> int:
    """How many aggregates the read models (``schemas``) have not yet applied up to their last recorded version
    (-1 while a read model has not created its tables)."""
    with psycopg.connect(database_url) as conn:
        missing = 0
        for schema in schemas:
            try:
                row = conn.execute(sql.SQL(
                    "SELECT count(*) FROM (SELECT originator_id, max(originator_version) AS v FROM {} "
                    "GROUP BY originator_id) e LEFT JOIN {}.stream_versions s ON s.aggregate_id = e.originator_id "
                    "WHERE s.version IS NULL OR s.version < e.v").format(
                        sql.Identifier(EVENTS_TABLE), sql.Identifier(schema))).fetchone()
            except psycopg.errors.UndefinedTable:
                return -1
            missing += int(row[0]) if row else 0
        return missing


def wait_caught_up(database_url: str, schemas: tuple[str, ...] = SCHEMAS, timeout: float = 60.0) -> None:
    """Poll until every event recorded so far has reached the read models (what the API reads shows every write)."""
    wait_until(lambda: behind(database_url, schemas) == 0, timeout=timeout, interval=0.1,
               what=f"the read side ({', '.join(schemas)}) to catch up with the event store")
