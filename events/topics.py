"""Kafka topic names (DESIGN.md, Topics)."""

from __future__ import annotations

EVENTS = "rx.events"
REJECTIONS = "rx.rejections"
DLQ = "rx.dlq"
INBOUND_PHARMACY = "rx.inbound.pharmacy"


def pharmacy_topic(pharmacy_id: str) -> str:
    return f"rx.pharmacy.{pharmacy_id}"


def inbound_topic(hospital_id: str) -> str:
    return f"rx.inbound.{hospital_id}"
