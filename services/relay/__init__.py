"""Event store → Kafka relay (``rxtrail run relay``), and the CLI's entry points."""

from __future__ import annotations

from services.relay.core import (
    DEFAULT_TOPIC,
    Relay,
    RelayConfig,
    RelayStats,
    republish,
    run_relay,
)

__all__ = [
    "DEFAULT_TOPIC",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "republish",
    "run_relay",
]
