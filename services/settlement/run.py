"""Composition root of the settlement worker: ``python -m services.settlement`` runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from projections.base import ProjectionConsumer
from services.application import RxTrail, build_application
from services.application.claims import SettlementConfig
from services.reference.policies import InstitutionLevel
from services.workers.settlement import SettlementWorker

log = logging.getLogger("rxtrail.settlement")

GROUP_ID = "rxtrail.settlement"
SCHEMA = "settlement_worker"


class SettlementSettings(BaseSettings):
    """Worker options (prefix ``RXTRAIL_SETTLEMENT_``); every default is ILLUSTRATIVE configuration."""

    model_config = SettingsConfigDict(env_prefix="RXTRAIL_SETTLEMENT_", env_file=".env", extra="ignore")

    personal_account_balance: Decimal = Field(default=Decimal("2000.00"), ge=0)
    default_institution_level: InstitutionLevel = InstitutionLevel.TERTIARY
    institution_levels: str = Field(default="{}", description='JSON: {"<physical institution id>": "secondary"}')

    def config(self) -> SettlementConfig:
        return SettlementConfig(personal_account_balance=self.personal_account_balance,
                                default_institution_level=self.default_institution_level,
                                institution_levels=json.loads(self.institution_levels))


def build_consumer(app: RxTrail, database_url: str, bootstrap: str, *, config: SettlementConfig | None = None,
                   topic: str = "rx.events", dlq_topic: str = "rx.dlq", group_id: str = GROUP_ID,
                   schema: str = SCHEMA, max_records: int = 500) -> ProjectionConsumer:
    """The worker inside the shared consumer loop (its state and offsets in ``schema``, one transaction a batch)."""
    worker = SettlementWorker(app, config or SettlementSettings().config())
    return ProjectionConsumer(worker, database_url, bootstrap, schema=schema, topic=topic, dlq_topic=dlq_topic,
                              group_id=group_id, max_records=max_records)


def main(argv: Sequence[str] | None = None) -> int:
    from services.infra.kafka_admin import ensure_topics_async
    from services.infra.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m services.settlement", description=__doc__)
    parser.add_argument("--database-url", default=None, help="default: RXTRAIL_DATABASE_URL or the embedded one")
    parser.add_argument("--bootstrap", default=None, help="default: RXTRAIL_KAFKA_BOOTSTRAP or the embedded one")
    parser.add_argument("--topic", default="rx.events")
    parser.add_argument("--dlq-topic", default="rx.dlq")
    parser.add_argument("--group-id", default=GROUP_ID)
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--max-records", type=int, default=500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    database_url = args.database_url or settings.resolved_database_url()
    bootstrap = args.bootstrap or settings.resolved_kafka_bootstrap()
    app = build_application(database_url, pseudonym_secret=settings.resolved_pseudonym_secret())

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await ensure_topics_async(bootstrap, [args.topic, args.dlq_topic], partitions=settings.partitions)
        consumer = build_consumer(app, database_url, bootstrap, topic=args.topic, dlq_topic=args.dlq_topic,
                                  group_id=args.group_id, schema=args.schema, max_records=args.max_records)
        log.info("settlement worker running (topic %s, group %s)", args.topic, args.group_id)
        await consumer.run(stop)
        stats = consumer.projection.stats  # type: ignore[attr-defined]
        log.info("settlement worker stopped: %s", stats)

    try:
        asyncio.run(go())
    finally:
        app.close()
    return 0
