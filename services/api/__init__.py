"""HTTP API (FastAPI, OpenAPI at /docs): ``create_app(settings)`` is the factory the composition root calls.

Nothing connects at import or in ``create_app``: the write side (``RxTrail``), the read pool and the gate are
built when the server starts (lifespan) and closed when it stops. The composition root hands in how to build the
application (``application_factory``: ``services.bootstrap.build_api``, which ``rxtrail run api`` serves); tests may
hand in an application of their own (``application``, left open on shutdown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from services.adapters.pool import open_pool
from services.api.console import router as console_router
from services.api.console.docs import router as docs_router
from services.api.deps import Runtime
from services.api.errors import install_error_handlers
from services.api.limits import BodyLimit
from services.api.reads import Reads
from services.api.routes import ROUTERS
from services.application import RxTrail
from services.application.access import Gate
from services.infra.settings import Settings

DESCRIPTION = ("Internet+ prescription circulation: hospitals, pharmacists, pharmacies, insurance agencies and "
               "regulators, each with its own API key and view. `GET /rules` lists every rule enforced or flagged.")


def create_app(settings: Settings | None = None, *, application: RxTrail | None = None,
               application_factory: Callable[[], RxTrail] | None = None, pool_size: int = 10) -> FastAPI:
    """The API. ``application``: an ``RxTrail`` to use and leave open; ``application_factory``: how to build one
    (closed on shutdown). One of them is needed once the server starts."""
    settings = settings or Settings()
    database_url = settings.resolved_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = application is None
        if application is not None:
            rx_app = application
        elif application_factory is not None:
            rx_app = application_factory()
        else:
            raise RuntimeError("create_app needs application= or application_factory= (services.bootstrap.build_api "
                               "gives one)")
        pool = open_pool(database_url, max_size=pool_size)
        # At most pool_size requests in threads at once (anyio's default is 40): a thread never waits for a pooled
        # connection (the store keeps pool_size open, the read pool grows to it), the rest queue on the event
        # loop. With 40, a burst had threads wait for the pools to open connections (slow on a busy machine), past
        # the API's short pool wait: 503s under load, and 40 threads contending for the GIL.
        to_thread.current_default_thread_limiter().total_tokens = pool_size
        app.state.runtime = Runtime(application=rx_app, pool=pool, gate=Gate(rx_app.store),
                                    reads=Reads(rx_app.store, pool))
        try:
            yield
        finally:
            pool.close()
            if owned:
                rx_app.close()

    app = FastAPI(title="rxtrail", version="0.1.0", lifespan=lifespan, description=DESCRIPTION,
                  docs_url=None, redoc_url=None)  # served offline by docs_router
    app.state.database_url = database_url
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit)  # 413 for a body larger than any valid one
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(console_router)  # GET /console: the regulator console page
    app.include_router(docs_router)  # GET /docs, /redoc: Swagger UI and ReDoc from local assets
    return app
