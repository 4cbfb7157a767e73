"""RXTRAIL_RELAY__IDEMPOTENCE: "auto" takes the idempotent producer when the broker grants one (Apache Kafka) and
falls back to plain acks=all when it refuses (Tansu); "required" never falls back: a refusing broker is an error."""

from __future__ import annotations

import pytest

from services.bootstrap import relay_config
from services.infra.settings import Settings
from services.relay.core import RelayStats, start_producer


async def test_required_idempotence_never_falls_back(kafka_bootstrap: str, broker_supports_idempotence: bool) -> None:
    settings = Settings(_env_file=None, database_url="postgresql://unused/x", kafka_bootstrap=kafka_bootstrap,  # type: ignore[call-arg]
                        relay={"idempotence": "required"})
    assert relay_config(settings).idempotence == "required"
    stats = RelayStats()
    if broker_supports_idempotence:
        producer = await start_producer(kafka_bootstrap, stats, "required")
        await producer.stop()
        assert stats.idempotent is True
    else:
        with pytest.raises(RuntimeError, match="refused an idempotent producer"):
            await start_producer(kafka_bootstrap, stats, "required")
        auto = RelayStats()
        producer = await start_producer(kafka_bootstrap, auto, "auto")
        await producer.stop()
        assert auto.idempotent is False
