"""HTTP API (FastAPI). One composition root: `create_app(settings)`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.infra.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="rxtrail", version="0.1.0", description="Internet+ prescription circulation")

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, Any]:
        import psycopg

        db_ok = False
        if settings.database_url:
            try:
                with psycopg.connect(settings.database_url, connect_timeout=2) as conn:
                    db_ok = conn.execute("SELECT 1").fetchone() == (1,)
            except psycopg.Error:
                db_ok = False
        return {"status": "ok" if db_ok else "degraded", "database": db_ok}

    return app
