"""Event store → Kafka relay (``python -m services.relay``), and the CLI's entry points."""

from __future__ import annotations

from services.relay.core import (
    DEFAULT_TOPIC,
    EVENT_ID_NAMESPACE,
    Relay,
    RelayConfig,
    RelayStats,
    event_id,
    republish,
    run_relay,
    run_relay_blocking,
)

__all__ = [
    "DEFAULT_TOPIC",
    "EVENT_ID_NAMESPACE",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "event_id",
    "republish",
    "run_relay",
    "run_relay_blocking",
]
