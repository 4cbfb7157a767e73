"""HTTP API (FastAPI, OpenAPI at /docs). One composition root: `create_app(settings)`.

Nothing connects at import or in ``create_app``: the write side (``RxTrail``), the read pool and the gate are
built when the server starts (lifespan) and closed when it stops. Tests may hand in an application of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from services.infra.settings import Settings


def create_app(settings: Settings | None = None, *, application: Any = None, pool_size: int = 10) -> FastAPI:
    """``application``: an ``RxTrail`` to use (left open on shutdown); default: built from ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from services.api.access import Gate
        from services.api.http import Runtime
        from services.api.views import Views
        from services.api.wiring import build_application, open_pool

        owned = application is None
        rx_app = build_application(settings, pool_size=pool_size) if owned else application
        pool = open_pool(settings.resolved_database_url(), max_size=pool_size)
        app.state.runtime = Runtime(application=rx_app, pool=pool, gate=Gate(rx_app.store),
                                    views=Views(rx_app.store, pool))
        try:
            yield
        finally:
            pool.close()
            if owned:
                rx_app.close()

    app = FastAPI(title="rxtrail", version="0.1.0", lifespan=lifespan,
                  description="Internet+ prescription circulation: hospitals, pharmacists, pharmacies, "
                              "insurance agencies and regulators, each with its own API key and view.")

    from services.api.console import router as console_router
    from services.api.http import install_error_handlers
    from services.api.routes import ROUTERS

    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(console_router)  # GET /console: the regulator console page

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, Any]:
        import psycopg

        db_ok = False
        try:
            with psycopg.connect(settings.resolved_database_url(), connect_timeout=2) as conn:
                db_ok = conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            db_ok = False
        return {"status": "ok" if db_ok else "degraded", "database": db_ok}

    @app.get("/asyncapi", tags=["ops"], summary="AsyncAPI document of rxtrail's Kafka topics")
    def asyncapi() -> JSONResponse:
        from services.workers.intake import asyncapi_document

        return JSONResponse(asyncapi_document())

    return app
