"""Composition root for the projection consumers: ``python -m projections <name|all>`` runs them until
SIGTERM/SIGINT. ``rxtrail up`` starts it; ``services.replay`` rebuilds the same projections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events import topics
from projections.base import ProjectionConsumer
from projections.registry import GROUP_PREFIX, NAMES, build, resolve

log = logging.getLogger("rxtrail.projections")


class ProjectionSettings(BaseSettings):
    """Projection options (prefix ``RXTRAIL_``), next to the shared Settings."""

    model_config = SettingsConfigDict(env_prefix="RXTRAIL_", env_file=".env", extra="ignore")

    deposit_rate: Decimal = Field(default=Decimal("0.05"), ge=0, lt=1,
                                  description="performance deposit withheld from hospitals (003 art. 20)")
    settle_with_delivery_enterprise: bool = Field(
        default=False, description="Jinan style: pharmacy-side fees are owed to the delivery enterprise (004 §六)")


async def run_projections(names: Sequence[str], database_url: str, bootstrap: str, stop: asyncio.Event, *,
                          topic: str = topics.EVENTS, dlq_topic: str = topics.DLQ, partitions: int = 12,
                          group_prefix: str = GROUP_PREFIX, max_records: int = 2000,
                          settings: ProjectionSettings | None = None) -> None:
    """Run one consumer per projection (group ``<group_prefix>.<name>``, schema ``<name>``) until ``stop`` is set
    or one of them fails."""
    from services.infra.kafka_admin import ensure_topics_async

    await ensure_topics_async(bootstrap, [topic, dlq_topic], partitions=partitions)
    consumers = [ProjectionConsumer(build(n, settings or ProjectionSettings()), database_url, bootstrap, topic=topic,
                                    dlq_topic=dlq_topic, group_id=f"{group_prefix}.{n}", max_records=max_records)
                 for n in names]
    tasks = [asyncio.create_task(c.run(stop), name=f"projection:{c.projection.name}") for c in consumers]
    log.info("projections running: %s (topic %s)", ", ".join(names), topic)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            log.info("projection %s stopped: applied=%d duplicates=%d dead_lettered=%d batches=%d", c.projection.name,
                     c.stats.applied, c.stats.duplicates, c.stats.dead_lettered, c.stats.batches)


def main(argv: Sequence[str] | None = None) -> int:
    from services.infra.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m projections", description=__doc__)
    parser.add_argument("name", nargs="?", default="all", help=f"{' | '.join(NAMES)} | all (default)")
    parser.add_argument("--database-url", default=None, help="default: RXTRAIL_DATABASE_URL or the embedded one")
    parser.add_argument("--bootstrap", default=None, help="default: RXTRAIL_KAFKA_BOOTSTRAP or the embedded one")
    parser.add_argument("--topic", default=topics.EVENTS)
    parser.add_argument("--dlq-topic", default=topics.DLQ)
    parser.add_argument("--group-prefix", default=GROUP_PREFIX, help="consumer group = <prefix>.<name>")
    parser.add_argument("--max-records", type=int, default=2000, help="records per batch (one transaction)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        names = resolve(args.name)
    except ValueError as exc:
        parser.error(str(exc))
    settings = Settings()
    database_url = args.database_url or settings.resolved_database_url()
    bootstrap = args.bootstrap or settings.resolved_kafka_bootstrap()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_projections(names, database_url, bootstrap, stop, topic=args.topic, dlq_topic=args.dlq_topic,
                              partitions=settings.partitions, group_prefix=args.group_prefix,
                              max_records=args.max_records)

    asyncio.run(go())
    return 0
