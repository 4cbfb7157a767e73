"""The one composition root: from one ``Settings``, every process of rxtrail.

Builders (each takes the settings; tests call the same ones, with settings of their own):

- ``build_application`` — the write side (``RxTrail``: the event store and the patient vault on PostgreSQL);
  ``build_vault``, ``build_statement_desk`` for the CLI's tools;
- ``build_api`` — the HTTP API (FastAPI);
- ``relay_config`` — the relay (event store → ``rx.events``);
- ``router_config``, ``gateway_config``, ``build_settlement``, ``build_intake``, (``build_expiry``) — the workers;
- ``build_projection`` / ``run_projections`` — the projection consumers (names from ``projections.registry``);
- ``run_checkpoints`` — signed checkpoints of the event log, every ``checkpoint_interval_s``.

``SERVICES`` maps each long-running service to a builder of a ``Service`` (``run(stop)`` plus what to close);
``run_service(name, settings)`` runs one until SIGTERM/SIGINT — it is ``rxtrail run <service>``, and
``rxtrail up`` starts each child as ``python -m services.cli run <service>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.adapters.patient_keys import PostgresPatientKeyStore
from services.adapters.store import DEFAULT_SNAPSHOT_INTERVAL, FAIL_FAST_POOL_WAIT_S, POOL_WAIT_S, RxTrailStore, open_store
from services.application import RxTrail
from services.application.claims import SettlementConfig
from services.application.privacy import PatientVault
from services.domain.clock import Clock
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.infra.runtime import configure_logging, run_until_signalled
from services.infra.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from projections.base import MissingEvents, Projection, ProjectionConsumer
    from services.application.ports import PartyDirectory
    from services.application.statements import StatementDesk
    from services.integrity.checkpoint import Checkpoint
    from services.relay.core import RelayConfig
    from services.workers.expiry import ExpiryConfig
    from services.workers.gateway import GatewayConfig
    from services.workers.intake import IntakeWorker
    from services.workers.router import RouterConfig

log = logging.getLogger("rxtrail.bootstrap")


# --- the write side -------------------------------------------------------------------------------------------


def build_application(
    settings: Settings,
    *,
    clock: Clock | None = None,
    rules: RuleConfig = DEFAULT_RULES,
    snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
    pool_size: int = 5,
    max_overflow: int = 10,
    max_attempts: int = 8,
    pool_wait_s: float = POOL_WAIT_S,
) -> RxTrail:
    """One per process: the event store, the patient vault and the command handlers (with ``settings.shards``:
    a ``ShardRouter`` over one event store per region shard, see ``build_sharded_application``)."""
    if settings.shards:
        return build_sharded_application(settings, clock=clock, rules=rules, snapshot_interval=snapshot_interval,
                                         pool_size=pool_size, max_overflow=max_overflow, max_attempts=max_attempts,
                                         pool_wait_s=pool_wait_s)
    store = open_store(settings.resolved_database_url(), snapshot_interval=snapshot_interval, pool_size=pool_size,
                       max_overflow=max_overflow, pool_wait_s=pool_wait_s)
    return RxTrail(store, build_vault(settings), clock=clock, rules=rules, max_attempts=max_attempts)


def build_vault(settings: Settings) -> PatientVault:
    """Patient pseudonyms and sealed personal fields (keys in the ``patient_keys`` table)."""
    return PatientVault(settings.resolved_pseudonym_secret(), PostgresPatientKeyStore(settings.resolved_database_url()))


def build_statement_desk(settings: Settings, *, clock: Clock | None = None) -> tuple[StatementDesk, RxTrailStore]:
    """Closing months and releasing deposits (the caller closes the returned store)."""
    from services.adapters.statement_figures import EventStoreDirectory, ProjectionFigures
    from services.application.statements import StatementDesk
    from services.domain.clock import SystemClock

    url = settings.resolved_database_url()
    store = open_store(url, pool_size=2, max_overflow=2)
    directory: PartyDirectory = EventStoreDirectory(url)
    if settings.shards:  # hospitals' regions come from their visits, in the region shards
        from services.adapters.shard_directory import PartyRegionsAcrossStores

        directory = PartyRegionsAcrossStores([EventStoreDirectory(u) for u in shard_database_urls(settings).values()])
    return StatementDesk(store, ProjectionFigures(url), directory, clock or SystemClock()), store


def _open_application(settings: Settings, attempts: int = 5) -> RxTrail:
    """``build_application`` for a service, retried a few times: at stack start-up several processes open the
    store at once, and PostgreSQL may refuse the loser of a concurrent CREATE TABLE IF NOT EXISTS."""
    for attempt in range(1, attempts + 1):
        try:
            return build_application(settings)
        except Exception as exc:  # retried, then raised with its cause
            if attempt == attempts:
                raise
            log.warning("opening the event store failed (%s); retrying", exc)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def build_sharded_application(
    settings: Settings,
    *,
    clock: Clock | None = None,
    rules: RuleConfig = DEFAULT_RULES,
    snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
    pool_size: int = 5,
    max_overflow: int = 10,
    max_attempts: int = 8,
    pool_wait_s: float = POOL_WAIT_S,
) -> RxTrail:
    """Region shards (``settings.shards``: pooling region -> database URL): one event store per region for its
    visits and prescriptions; registries, trace codes (R8 stays platform-wide), the shard directory and regions
    without a shard of their own in ``database_url``. A region mapped to ``database_url`` shares that store."""
    from services.adapters.shard_directory import PostgresShardDirectory
    from services.application.sharding import ShardRouter

    global_url = settings.resolved_database_url()
    opened: dict[str, RxTrailStore] = {}

    def store_at(url: str) -> RxTrailStore:
        if url not in opened:
            opened[url] = open_store(url, snapshot_interval=snapshot_interval, pool_size=pool_size,
                                     max_overflow=max_overflow, pool_wait_s=pool_wait_s)
        return opened[url]

    global_store = store_at(global_url)
    regions = {region: store_at(url) for region, url in settings.shards.items() if url != global_url}
    return ShardRouter(global_store=global_store, region_stores=regions,
                       directory=PostgresShardDirectory(global_url), vault=build_vault(settings), clock=clock,
                       rules=rules, max_attempts=max_attempts, closers=[s.close for s in opened.values()])


def shard_database_urls(settings: Settings) -> dict[str, str]:
    """Every event store of the write side: ``{"global": database_url, <region>: <its URL>, ...}`` (one entry
    without shards). Each has its own relay, position table and notification ids."""
    from services.application.sharding import GLOBAL

    urls = {GLOBAL: settings.resolved_database_url()}
    urls.update({region: url for region, url in settings.shards.items() if url not in urls.values()})
    return urls


def release_stranded_reservations(settings: Settings, application: RxTrail, *, older_than_s: float = 300.0,
                                  sold_after: datetime | None = None, sold_before: datetime | None = None
                                  ) -> list[Any]:
    """Repair job for region shards: release trace codes reserved by a sale whose region write never happened (the
    writer stopped in between; ``services.application.sharding``). Only sales older than ``older_than_s`` (by the
    application's clock; or before ``sold_before``) are considered, so no writer can still be between its two
    writes, and none before ``sold_after`` when given. Returns released ids. Scheduled by the expiry service
    (``run_stranded_releases``)."""
    from services.adapters.shard_directory import held_for_prescriptions
    from services.application.sharding import ShardRouter

    if not isinstance(application, ShardRouter):
        return []
    cutoff = sold_before or application.clock.now() - timedelta(seconds=older_than_s)
    return application.release_stranded(held_for_prescriptions(settings.resolved_database_url(), cutoff, sold_after))


async def run_stranded_releases(settings: Settings, application: RxTrail, stop: asyncio.Event) -> None:
    """``release_stranded_reservations`` every ``expiry.stranded_interval_s`` until ``stop`` is set (region shards;
    part of the expiry service). Each round covers the sales since the previous round's cutoff; the first one
    ``expiry.stranded_lookback_s`` back. A failed round is logged and its window retried by the next."""
    e = settings.expiry
    since = application.clock.now() - timedelta(seconds=e.stranded_age_s + e.stranded_lookback_s)
    while not stop.is_set():
        cutoff = application.clock.now() - timedelta(seconds=e.stranded_age_s)
        try:
            released = await asyncio.to_thread(release_stranded_reservations, settings, application,
                                               sold_after=since, sold_before=cutoff)
            since = max(since, cutoff)
            if released:
                log.warning("released %d trace codes reserved by sales whose dispense never reached its region",
                            len(released))
        except Exception:  # the database away: the same window next round
            log.warning("releasing stranded reservations failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), e.stranded_interval_s)


def missing_events(settings: Settings) -> MissingEvents:
    """Where consumers read versions the topic skipped: the event store, or every shard's (``settings.shards``)."""
    from services.adapters.missing_events import StoreEvents
    from services.adapters.shard_events import ShardedStoreEvents

    if settings.shards:
        return ShardedStoreEvents(shard_database_urls(settings).values())
    return StoreEvents(settings.resolved_database_url())


def _shard_gaps(settings: Settings) -> MissingEvents | None:
    """A worker config's ``missing``: every store's when sharded; None = run_worker's default, the store at the
    config's own ``database_url``."""
    return missing_events(settings) if settings.shards else None


# --- the API --------------------------------------------------------------------------------------------------


def build_api(settings: Settings, *, application: RxTrail | None = None, pool_size: int | None = None) -> FastAPI:
    """The HTTP API; its write side is ``application`` (left open) or one built when the server starts."""
    from services.api import create_app

    pool_size = pool_size or settings.api_pool_size
    return create_app(settings, application=application, pool_size=pool_size,
                      application_factory=lambda: build_application(settings, pool_size=pool_size,
                                                                     pool_wait_s=FAIL_FAST_POOL_WAIT_S))


def bind_api_socket(config: Any) -> socket.socket:
    """The API's listening socket (uvicorn ``Config.bind_socket``), shared by every API worker process, with
    TCP_NODELAY, which the connections it accepts inherit. asyncio sets TCP_NODELAY only on sockets whose proto is
    IPPROTO_TCP and ``bind_socket()`` makes proto 0, so without it the accepted connections kept Nagle on: a
    response's headers and body went out as two writes and the body waited for the client's delayed ACK, ~40 ms
    on every request of a kept-alive connection (bench/api.py: p50 48 ms at 100 req/s)."""
    sock: socket.socket = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def serve_api(settings: Settings, stop: asyncio.Event, *, application: RxTrail | None = None) -> None:
    """Serve the API with uvicorn on ``api_host:api_port`` until ``stop`` is set: ``api_workers`` processes (one
    per core by default; one when ``application`` is given) accept on one listening socket, each with its own
    write side and pools of ``api_pool_size``. The extra workers die with this process (parent-death signal)."""
    import multiprocessing

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are ours (services.infra.runtime)
            yield

    config = uvicorn.Config(build_api(settings, application=application), host=settings.api_host,
                            port=settings.api_port, log_level="warning", lifespan="on", access_log=False)
    sock = bind_api_socket(config)
    workers = 1 if application is not None else settings.resolved_api_workers
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=_api_worker, args=(settings, sock), name=f"rxtrail-api-{n}", daemon=True)
                for n in range(1, workers)]
    for child in children:
        child.start()
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        for child in children:
            child.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        await serving
        for child in children:
            await asyncio.to_thread(child.join, 10)
        sock.close()


def _api_worker(settings: Settings, sock: Any) -> None:
    """One extra API process (``serve_api``): serves on the inherited socket until SIGTERM or its parent dies."""
    import ctypes
    import signal

    import uvicorn

    with contextlib.suppress(OSError, AttributeError):  # Linux: SIGTERM when the parent dies, even by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    configure_logging(settings.log_level)
    uvicorn.Server(uvicorn.Config(build_api(settings), log_level="warning", lifespan="on", access_log=False)).run(
        sockets=[sock])


# --- the relay ------------------------------------------------------------------------------------------------


def relay_config(settings: Settings, **overrides: Any) -> RelayConfig:
    """The relay's configuration; keyword overrides replace ``RelayConfig`` fields (topic=, name=, ...)."""
    from dataclasses import replace

    from services.relay.core import RelayConfig

    r = settings.relay
    config = RelayConfig(database_url=settings.resolved_database_url(), bootstrap=settings.resolved_kafka_bootstrap(),
                         name=r.name, partitions=settings.partitions, batch_size=r.batch_size,
                         poll_interval_s=r.poll_interval_s, check_interval_s=r.check_interval_s,
                         max_backoff_s=r.max_backoff_s, logs=tuple(r.logs), topic=settings.events_topic,
                         commit_delay_s=r.commit_delay_s, idempotence=r.idempotence)
    return replace(config, **overrides)


# --- workers --------------------------------------------------------------------------------------------------


def router_config(settings: Settings, **overrides: Any) -> RouterConfig:
    from dataclasses import replace

    from services.workers.router import RouterConfig

    r = settings.router
    config = RouterConfig(settings.resolved_database_url(), settings.resolved_kafka_bootstrap(), group_id=r.group_id,
                          schema=r.schema_name, partitions=settings.partitions, max_records=r.max_records,
                          topic=settings.events_topic, dlq_topic=settings.dlq_topic, missing=_shard_gaps(settings))
    return replace(config, **overrides)


def gateway_config(settings: Settings, **overrides: Any) -> GatewayConfig:
    from dataclasses import replace

    from services.workers.gateway import GatewayConfig

    g = settings.gateway
    config = GatewayConfig(settings.resolved_database_url(), settings.resolved_kafka_bootstrap(), group_id=g.group_id,
                           schema=g.schema_name, feed_prefix=g.feed_prefix, feed_partitions=g.feed_partitions,
                           partitions=settings.partitions, max_records=g.max_records, topic=settings.events_topic,
                           dlq_topic=settings.dlq_topic, missing=_shard_gaps(settings))
    return replace(config, **overrides)


def settlement_config(settings: Settings) -> SettlementConfig:
    s = settings.settlement
    return SettlementConfig(personal_account_balance=s.personal_account_balance,
                            default_institution_level=s.default_institution_level,
                            institution_levels=dict(s.institution_levels))


def build_settlement(settings: Settings, application: RxTrail, *, config: SettlementConfig | None = None,
                     **overrides: Any) -> ProjectionConsumer:
    """The settlement worker inside the shared consumer loop (its state and offsets in its own schema);
    ``overrides``: ``ProjectionConsumer`` fields (group_id=, schema=, max_records=, ...)."""
    from projections.base import ProjectionConsumer
    from services.workers.settlement import SettlementWorker

    s = settings.settlement
    worker = SettlementWorker(application, config or settlement_config(settings))
    options: dict[str, Any] = {"schema": s.schema_name, "group_id": s.group_id, "max_records": s.max_records,
                               "topic": settings.events_topic, "dlq_topic": settings.dlq_topic,
                               "missing": missing_events(settings), **overrides}
    return ProjectionConsumer(worker, settings.resolved_database_url(), settings.resolved_kafka_bootstrap(), **options)


def build_intake(settings: Settings, application: RxTrail, **overrides: Any) -> IntakeWorker:
    """The Kafka intake (``rx.inbound.*`` → commands); ``overrides``: ``create_intake`` options."""
    from services.workers.intake import create_intake

    options: dict[str, Any] = {"group_id": settings.intake.group_id, "max_records": settings.intake.max_records,
                               **overrides}
    return create_intake(application, settings.resolved_kafka_bootstrap(), **options)


def has_expiry() -> bool:
    """Whether the expiry worker exists yet (``services/workers/expiry.py``)."""
    return importlib.util.find_spec("services.workers.expiry") is not None


def expiry_config(settings: Settings, **overrides: Any) -> ExpiryConfig:
    from dataclasses import replace

    from services.workers.expiry import ExpiryConfig

    e = settings.expiry
    config = ExpiryConfig(settings.resolved_database_url(), settings.resolved_kafka_bootstrap(), group_id=e.group_id,
                          schema=e.schema_name, partitions=settings.partitions, max_records=e.max_records,
                          interval_s=e.interval_s, grace_s=e.grace_s, sweep_limit=e.sweep_limit,
                          topic=settings.events_topic, dlq_topic=settings.dlq_topic, missing=_shard_gaps(settings))
    return replace(config, **overrides)


def build_expiry(settings: Settings, application: RxTrail, *, clock: Clock | None = None
                 ) -> Callable[[asyncio.Event], Awaitable[object]]:
    """The expiry worker: ``run(stop)`` sends ``ExpirePrescription`` once a prescription's validity elapsed
    (``services.workers.expiry``; ``clock``: the worker's, default the system clock)."""
    from services.workers.expiry import run_expiry

    config = expiry_config(settings)
    return lambda stop: run_expiry(config, stop, application, clock=clock)


# --- projections ----------------------------------------------------------------------------------------------


def build_projection(name: str, settings: Settings) -> Projection:
    """A fresh projection object, configured from ``settings.projections``."""
    from projections import registry

    return registry.build(name, settings.projections)


async def run_projections(names: Sequence[str], settings: Settings, stop: asyncio.Event) -> None:
    """One consumer per projection (group ``<group_prefix>.<name>``, schema ``<name>``) until ``stop`` is set or
    one of them fails."""
    from projections import registry
    from projections.base import ProjectionConsumer
    from services.infra.kafka_admin import ensure_topics_async

    p = settings.projections
    database_url, bootstrap = settings.resolved_database_url(), settings.resolved_kafka_bootstrap()
    topic, dlq_topic = settings.events_topic, settings.dlq_topic
    await ensure_topics_async(bootstrap, [topic, dlq_topic], partitions=settings.partitions)
    consumers = [ProjectionConsumer(build_projection(n, settings), database_url, bootstrap, topic=topic,
                                    dlq_topic=dlq_topic, schema=registry.get(n).schema,
                                    missing=missing_events(settings),
                                    group_id=registry.get(n).group_id(p.group_prefix), max_records=p.max_records)
                 for n in names]
    tasks = [asyncio.create_task(c.run(stop), name=f"projection:{c.projection.name}") for c in consumers]
    log.info("projections running: %s (topic %s)", ", ".join(names), topic)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if (exc := task.exception()) is not None:
                raise exc
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            log.info("projection %s stopped: applied=%d duplicates=%d dead_lettered=%d batches=%d", c.projection.name,
                     c.stats.applied, c.stats.duplicates, c.stats.dead_lettered, c.stats.batches)


# --- checkpoints ----------------------------------------------------------------------------------------------


def checkpoint_stores(settings: Settings) -> dict[str, Checkpoint]:
    """Sign a checkpoint of each event store (``shard_database_urls``), in its own database; with region shards
    the payload names the store (``services.integrity.checkpoint``)."""
    from services.integrity.checkpoint import create_checkpoint

    return {name: create_checkpoint(url, settings.data_dir, store=name if settings.shards else None)
            for name, url in shard_database_urls(settings).items()}


async def run_checkpoints(settings: Settings, stop: asyncio.Event) -> None:
    """Sign the head of the event log (each store's, with region shards) now and every ``checkpoint_interval_s``
    until ``stop`` is set; publish each to ``rx.checkpoints`` (one not published for want of Kafka goes with the
    next)."""
    from services.integrity.witness import publish_pending

    while not stop.is_set():
        for name, checkpoint in (await asyncio.to_thread(checkpoint_stores, settings)).items():
            log.info("checkpoint %s%s", f"{name} " if settings.shards else "", checkpoint)
        try:
            for url in shard_database_urls(settings).values():
                await publish_pending(url, settings.resolved_kafka_bootstrap(), settings.checkpoints_topic)
        except Exception:  # Kafka down: the database keeps it unpublished until the next round
            log.warning("checkpoint copies not published to %s", settings.checkpoints_topic, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.checkpoint_interval_s)


# --- services -------------------------------------------------------------------------------------------------


@dataclass
class Service:
    """A long-running process body: ``run(stop)`` until ``stop`` is set; then ``close()``."""

    name: str
    run: Callable[[asyncio.Event], Awaitable[object]]
    closers: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def _api(settings: Settings, _arg: str | None) -> Service:
    return Service("api", lambda stop: serve_api(settings, stop))


def _relay(settings: Settings, _arg: str | None) -> Service:
    from services.application.sharding import GLOBAL
    from services.relay.core import run_relay

    if settings.shards:  # one relay per event store, all into the one events topic
        configs = [relay_config(settings, database_url=url, name=settings.relay.name if shard == GLOBAL
                                else f"{settings.relay.name}-{shard}")
                   for shard, url in shard_database_urls(settings).items()]

        async def run_all(stop: asyncio.Event) -> None:
            await asyncio.gather(*(run_relay(config, stop) for config in configs))

        return Service("relay", run_all)
    return Service("relay", lambda stop: run_relay(relay_config(settings), stop))


def _router(settings: Settings, _arg: str | None) -> Service:
    from services.workers.router import run_router

    app = _open_application(settings)
    return Service("router", lambda stop: run_router(router_config(settings), stop, app), [app.close])


def _gateway(settings: Settings, _arg: str | None) -> Service:
    from services.workers.gateway import run_gateway

    return Service("gateway", lambda stop: run_gateway(gateway_config(settings), stop))


def _settlement(settings: Settings, _arg: str | None) -> Service:
    from services.infra.kafka_admin import ensure_topics_async

    app = _open_application(settings)

    async def run(stop: asyncio.Event) -> None:
        await ensure_topics_async(settings.resolved_kafka_bootstrap(), [settings.events_topic, settings.dlq_topic],
                                  partitions=settings.partitions)
        consumer = build_settlement(settings, app)
        log.info("settlement worker running (topic %s, group %s)", consumer.topic, consumer.group_id)
        await consumer.run(stop)
        log.info("settlement worker stopped: %s", getattr(consumer.projection, "stats", None))

    return Service("settlement", run, [app.close])


def _intake(settings: Settings, _arg: str | None) -> Service:
    app = _open_application(settings)

    async def run(stop: asyncio.Event) -> None:
        worker = build_intake(settings, app)
        await worker.broker.start()
        try:
            await stop.wait()
        finally:
            await worker.broker.stop()

    return Service("intake", run, [app.close])


def _projections(settings: Settings, arg: str | None) -> Service:
    from projections import registry

    names = registry.resolve(arg or "all")
    return Service("projections", lambda stop: run_projections(names, settings, stop))


def _checkpoint(settings: Settings, _arg: str | None) -> Service:
    return Service("checkpoint", lambda stop: run_checkpoints(settings, stop))


def _expiry(settings: Settings, _arg: str | None) -> Service:
    app = _open_application(settings)
    expire = build_expiry(settings, app)
    if not settings.shards:
        return Service("expiry", expire, [app.close])

    async def run(stop: asyncio.Event) -> None:  # with region shards it also releases stranded reservations
        tasks = [asyncio.ensure_future(expire(stop)), asyncio.ensure_future(run_stranded_releases(settings, app, stop))]
        try:
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    return Service("expiry", run, [app.close])


SERVICES: dict[str, Callable[[Settings, str | None], Service]] = {
    "api": _api,
    "relay": _relay,
    "router": _router,
    "settlement": _settlement,
    "gateway": _gateway,
    "intake": _intake,
    "projection": _projections,
    "checkpoint": _checkpoint,
    "expiry": _expiry,
}
"""Every long-running service: ``rxtrail run <name> [arg]`` (``projection`` takes a projection name or all)."""


def build_service(name: str, settings: Settings, arg: str | None = None) -> Service:
    try:
        builder = SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}") from None
    return builder(settings, arg)


def run_service(name: str, settings: Settings | None = None, arg: str | None = None) -> int:
    """Run one service until SIGTERM/SIGINT; the process's exit code."""
    from services.adapters.stage_health import ErrorRecorder

    settings = settings or Settings()
    configure_logging(settings.log_level)
    # the stage's own warnings and errors become its last_error in /health and `rxtrail status`
    recorder = ErrorRecorder(settings.resolved_database_url(), f"{name}:{arg or 'all'}" if name == "projection" else name)
    logging.getLogger().addHandler(recorder)
    service = build_service(name, settings, arg)
    try:
        return run_until_signalled(service.run)
    finally:
        service.close()
        logging.getLogger().removeHandler(recorder)
        recorder.flush()
