"""Operations: liveness with a database check, and the AsyncAPI document of the Kafka topics. No key needed."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.adapters.dead_letters import dead_letter_counts
from services.adapters.stage_health import consumer_stages, shard_stores, stage_report
from services.infra.settings import Settings

router = APIRouter(tags=["ops"])


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    db_ok = False
    dead: dict[str, int] = {}
    stages: dict[str, Any] = {}
    try:
        with psycopg.connect(request.app.state.database_url, connect_timeout=2) as conn:
            db_ok = conn.execute("SELECT 1").fetchone() == (1,)
            dead = dead_letter_counts(conn)
            # per stage: pid, restarts, lag (events still to publish/apply), last error (services.infra.stack)
            settings = getattr(request.app.state, "settings", None) or Settings()
            stages = stage_report(conn, consumer_stages(settings), shards=shard_stores(settings))
    except psycopg.Error:
        db_ok = False
    # a dead letter does not stop a stage (it moved past it), so the status stays ok; operators read the counts
    return {"status": "ok" if db_ok else "degraded", "database": db_ok, "dead_letters": dead, "stages": stages}


@router.get("/asyncapi", summary="AsyncAPI document of rxtrail's Kafka topics")
def asyncapi() -> JSONResponse:
    from services.adapters.asyncapi import asyncapi_document

    return JSONResponse(asyncapi_document())
