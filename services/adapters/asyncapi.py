"""rxtrail's Kafka topics as faststream declarations: the broker the Kafka intake subscribes on, and the AsyncAPI
3.0 document built from the same declarations (served by the API at ``/asyncapi.json``, written by
``rxtrail asyncapi``). What each topic carries is said once, here and in ``events.contracts``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from events import topics
from events.contracts import Rejection
from services.application import commands as c

INTAKE_GROUP = "rxtrail-intake"
"""The Kafka intake's consumer group (and its name in dead letters)."""
INBOUND_TITLE = "rx.inbound.*"
INBOUND_DESCRIPTION = ("commands as JSON from hospitals (rx.inbound.<hospital_id>) and pharmacies "
                       "(rx.inbound.pharmacy); key = the sender's reference")


def build_broker(bootstrap: str, metadata_max_age_ms: int = 30_000, *, logger: logging.Logger | None = None
                 ) -> KafkaBroker:
    # The pattern subscription sees a new rx.inbound.<hospital> topic only at a metadata refresh: every 30 s,
    # not Kafka's default 5 minutes, so a newly onboarded hospital is heard promptly.
    # "a:9092,b:9092,c:9092" is three servers: faststream takes one string as ONE host ("a:9092,b:9092,c" port 9092)
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    return KafkaBroker(servers, client_id=INTAKE_GROUP, logger=logger, metadata_max_age_ms=metadata_max_age_ms)


def declare_publishers(broker: KafkaBroker) -> None:
    """Documented in the AsyncAPI document (the relay and gateway publish these; the intake the last two)."""
    broker.publisher(topics.EVENTS, title=topics.EVENTS, description=(
        "every recorded event, key = aggregate id; headers: event_id, aggregate_id, aggregate_version, "
        "notification_id, event_type, schema_version, business_type (written by the relay)"),
        schema=dict[str, Any])
    feed = topics.pharmacy_topic("{pharmacy_id}")
    broker.publisher(feed, title=feed, description=(
        "prescriptions routed to one pharmacy, patient pseudonymised, key = prescription id (gateway)"),
        schema=dict[str, Any])
    broker.publisher(topics.REJECTIONS, title=topics.REJECTIONS, description=(
        "refused inbound commands, key = the sender's command_id (else the message key)"), schema=Rejection)
    broker.publisher(topics.DLQ, title=topics.DLQ, description=(
        "undecodable input, original key and value; headers dlq_error, dlq_source, dlq_consumer"), schema=bytes)
    broker.publisher(topics.CHECKPOINTS, title=topics.CHECKPOINTS, description=(
        "copies of the signed checkpoints of the event log, key = the logs they cover; value {id, payload "
        "(the signed JSON), signature (base64 Ed25519)} (the checkpoint runner)"), schema=dict[str, Any])


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of rxtrail's topics (no connection is opened)."""
    broker = build_broker("localhost:9092")

    @broker.subscriber(pattern=topics.INBOUND_PATTERN, group_id=INTAKE_GROUP, batch=True, title=INBOUND_TITLE,
                       description=INBOUND_DESCRIPTION)
    async def inbound(body: list[c.AnyCommand]) -> None: ...  # the schema of what senders may send

    declare_publishers(broker)
    spec = AsyncAPI(broker, title="rxtrail topics", version="0.1.0",
                    description="Kafka topics of rxtrail (DESIGN.md, Topics)")
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return document


def export_asyncapi(path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n")
    return out
