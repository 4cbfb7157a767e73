"""Kafka topic names (DESIGN.md, Topics): the only place they are spelled."""

from __future__ import annotations

EVENTS = "rx.events"
"""Every recorded event, key = aggregate id (the relay writes it)."""
REJECTIONS = "rx.rejections"
"""Refused inbound commands (the intake writes them; ``events.contracts.Rejection``)."""
DLQ = "rx.dlq"
"""Messages no consumer could read (``events.contracts.dead_letter_headers``)."""
INBOUND_PHARMACY = "rx.inbound.pharmacy"
"""Commands from pharmacies (the sender is the pharmacy the command names)."""
CHECKPOINTS = "rx.checkpoints"
"""Copies of the signed checkpoints, key = the logs they cover (``services.integrity.witness``)."""
CORE_TOPICS = (EVENTS, REJECTIONS, DLQ, INBOUND_PHARMACY, CHECKPOINTS)
"""The topics ``rxtrail up`` creates before anything else starts."""

PHARMACY_PREFIX = "rx.pharmacy."
"""``rx.pharmacy.<pharmacy_id>``: one pharmacy's feed (``events.contracts.FeedMessage``)."""
INBOUND_PREFIX = "rx.inbound."
"""``rx.inbound.<hospital_id>``: commands from one hospital."""
INBOUND_PATTERN = r"rx\.inbound\..+"
"""Every inbound topic, hospitals' and the pharmacies' one (a regular expression, for pattern subscriptions)."""


def pharmacy_topic(pharmacy_id: str, prefix: str = PHARMACY_PREFIX) -> str:
    """The feed topic of one pharmacy (``prefix`` is for tests that isolate their feeds)."""
    return f"{prefix}{pharmacy_id}"


def inbound_topic(hospital_id: str) -> str:
    """The topic one hospital sends its commands on."""
    return f"{INBOUND_PREFIX}{hospital_id}"
