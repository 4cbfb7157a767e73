"""Region shards (deploy/SCALING.md, "Region shards (demonstrated)"): three databases on the session's PostgreSQL
stand in for three servers — the global store (registries, trace codes, the shard directory) and one event store
per pooling region (Changchun, Jinan) — behind one ``RxTrail`` built by the composition root from
``Settings(shards=...)``; one relay per store into one topic; the projections, unchanged, equal the union."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from events.base import CatalogCategory, RealNameMethod
from events.prescription import PrescriptionDispensed, PrescriptionSettled, RuleFlagged
from events.trace_code import TraceCodeReturned, TraceCodeSold
from projections import registry
from projections.base import apply_batch, decode_stored, ensure_schema
from services.adapters.event_log import discover_logs, pages
from services.application import RxTrail
from services.application import commands as c
from services.application.ids import trace_code_id_for
from services.application.outcomes import Outcome
from services.application.sharding import GLOBAL, RELEASE_REASON, RegionStore, ShardRouter
from services.bootstrap import build_application, build_settlement, relay_config, run_projections, shard_database_urls
from services.domain.clock import FixedClock
from services.domain.prescription import Prescription, project_prescription
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import Settings
from services.relay.core import run_relay
from tests.support import unique_id, unique_topic
from tests.support.cast import CHANGCHUN, JINAN, METFORMIN, REGULATOR, SECRET, Cast, item, line, ok, trace_codes
from tests.support.trails import applied_versions, differences, dump_all
from tests.support.waits import wait_until_async

T = TypeVar("T")
CATALOGUED = "XA10BAA001A001030101"  # metformin, category A in the 2026.1 reference
NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)  # a day the reference policies of both regions are in effect


@pytest.fixture(scope="module")
def shards(make_database: Callable[[], str]) -> dict[str, str]:
    return {GLOBAL: make_database(), CHANGCHUN: make_database(), JINAN: make_database()}


@pytest.fixture(scope="module")
def settings(shards: dict[str, str]) -> Settings:
    return Settings(database_url=shards[GLOBAL], pseudonym_secret=SECRET,
                    shards={CHANGCHUN: shards[CHANGCHUN], JINAN: shards[JINAN]})


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[RxTrail]:
    application = build_application(settings, clock=FixedClock(NOW), pool_size=10, max_overflow=30)
    yield application
    application.close()


@pytest.fixture(scope="module")
def casts(app: RxTrail) -> dict[str, Cast]:
    return {region: Cast(app, region=region, patient_per_visit=True).register() for region in (CHANGCHUN, JINAN)}


def streams_in(database_url: str, aggregate_id: UUID) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM rxtrail_events WHERE originator_id = %s", (aggregate_id,)).fetchone()
        return int(row[0]) if row else 0


def events_of(database_url: str, aggregate_id: UUID) -> list[Any]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT notification_id, originator_id, originator_version, topic, state FROM "
                            "rxtrail_events WHERE originator_id = %s ORDER BY originator_version",
                            (aggregate_id,)).fetchall()
    return [decode_stored(*row).event for row in rows]


def all_at_once(n: int, work: Callable[[int], T]) -> list[T]:
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


# --- the write side ------------------------------------------------------------------------------------------


def test_unset_shards_is_one_store(make_database: Callable[[], str]) -> None:
    plain = build_application(Settings(database_url=make_database(), pseudonym_secret=SECRET))
    try:
        assert type(plain) is RxTrail
    finally:
        plain.close()
    assert shard_database_urls(Settings(database_url="postgresql://h/one")) == {GLOBAL: "postgresql://h/one"}


def test_each_region_writes_its_own_store(app: RxTrail, casts: dict[str, Cast], shards: dict[str, str]) -> None:
    assert isinstance(app, ShardRouter)
    placed: dict[str, UUID] = {}
    for region, cast in casts.items():
        rx = cast.collected()
        ok(cast.settle(rx))
        placed[region] = rx
        loaded = app.store.load(Prescription, rx, project_prescription)  # the API's read path, across shards
        assert loaded is not None and loaded.id == rx and loaded.version == len(app.history(rx))
    for region, rx in placed.items():
        other = JINAN if region == CHANGCHUN else CHANGCHUN
        assert streams_in(shards[region], rx) > 0
        assert streams_in(shards[other], rx) == 0 and streams_in(shards[GLOBAL], rx) == 0
        assert app.directory.shard_of(rx) == region  # type: ignore[attr-defined]
        # the sale's trace codes live in the global store, with the registries
        sold = [e for e in events_of(shards[region], rx) if isinstance(e, PrescriptionDispensed)]
        for code in sold[0].lines[0].trace_codes:
            assert streams_in(shards[GLOBAL], trace_code_id_for(code)) == 1
            assert streams_in(shards[region], trace_code_id_for(code)) == 0
    # history and keyed outcomes are found across shards
    assert app.history(placed[JINAN])
    assert app.recorded_outcomes(["no-such-key"]) == {}


def test_a_code_sold_in_one_region_is_refused_in_the_other(app: RxTrail, casts: dict[str, Cast],
                                                           shards: dict[str, str]) -> None:
    changchun, jinan = casts[CHANGCHUN], casts[JINAN]
    first, second = changchun.accepted(item(METFORMIN, 4)), jinan.accepted(item(METFORMIN, 4))
    codes = trace_codes(4)
    ok(changchun.dispense(first, line(METFORMIN, 4, codes=codes)))
    refused = jinan.dispense(second, line(METFORMIN, 4, codes=codes))
    assert (refused.status, refused.error, refused.rule_id) == ("rejected", "RuleViolation", "R8")
    assert [e.event_type for e in refused.events] == ["RuleFlagged"]
    flags = [e for e in events_of(shards[JINAN], second) if isinstance(e, RuleFlagged)]
    assert [(f.rule_id, f.details["trace_code"]) for f in flags] == [("R8", codes[0])]
    assert not any(isinstance(e, PrescriptionDispensed) for e in events_of(shards[JINAN], second))
    sales = events_of(shards[GLOBAL], trace_code_id_for(codes[0]))
    assert len(sales) == 1 and isinstance(sales[0], TraceCodeSold) and sales[0].prescription_id == first


@pytest.mark.parametrize("round_", range(4))
def test_two_regions_selling_one_code_at_once_exactly_one_wins(app: RxTrail, casts: dict[str, Cast],
                                                               shards: dict[str, str], round_: int) -> None:
    regions = (CHANGCHUN, JINAN)
    prescriptions = [casts[r].accepted(item(METFORMIN, 4)) for r in regions]
    shared = trace_codes(1)[0]
    own = trace_codes(6)

    def sell(i: int) -> Outcome:
        return casts[regions[i]].dispense(prescriptions[i], line(METFORMIN, 4, codes=(shared, *own[i * 3:i * 3 + 3])))

    outcomes = all_at_once(2, sell)
    assert sorted(o.status for o in outcomes) == ["ok", "rejected"], outcomes
    loser = 0 if not outcomes[0].ok else 1
    assert (outcomes[loser].error, outcomes[loser].rule_id) == ("RuleViolation", "R8")
    loser_rx, winner_rx = prescriptions[loser], prescriptions[1 - loser]
    flags = [e for e in events_of(shards[regions[loser]], loser_rx) if isinstance(e, RuleFlagged)]
    assert [(f.rule_id, f.details["trace_code"]) for f in flags] == [("R8", shared)]
    sales = [e for e in events_of(shards[GLOBAL], trace_code_id_for(shared)) if isinstance(e, TraceCodeSold)]
    assert [s.prescription_id for s in sales] == [winner_rx]
    # the loser's own codes: never sold, or sold and released again — never left held
    for code in own[loser * 3:loser * 3 + 3]:
        stream = events_of(shards[GLOBAL], trace_code_id_for(code))
        assert not stream or isinstance(stream[-1], TraceCodeReturned)


def test_concurrent_retries_of_one_keyed_dispense_record_once(app: RxTrail, casts: dict[str, Cast],
                                                              shards: dict[str, str]) -> None:
    cast = casts[JINAN]
    rx = cast.accepted()
    command = c.DispensePrescription(command_id=f"pos-{rx}-1", prescription_id=rx, dispenser_id=cast.pharmacy,
                                     lines=(line(METFORMIN, 4, codes=4),))
    outcomes = all_at_once(12, lambda i: app.handle(command))
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
    assert sum(not o.replayed for o in outcomes) == 1
    assert sum(isinstance(e, PrescriptionDispensed) for e in events_of(shards[JINAN], rx)) == 1
    assert not any(isinstance(e, RuleFlagged) for e in events_of(shards[JINAN], rx))


def test_a_sale_whose_region_write_fails_releases_its_codes(app: RxTrail, casts: dict[str, Cast],
                                                            shards: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(app, ShardRouter)
    cast = casts[CHANGCHUN]
    rx = cast.accepted()
    region_store = app.regions[CHANGCHUN].store
    assert isinstance(region_store, RegionStore)
    home_save = region_store.home.save
    failed: list[int] = []

    def lose_once(*objs: Any, **kwargs: Any) -> Any:
        if not failed:  # the prescription moved on between load and save (as another writer would make it)
            failed.append(1)
            raise IntegrityError("simulated: the prescription's version was taken")
        return home_save(*objs, **kwargs)

    monkeypatch.setattr(region_store.home, "save", lose_once)
    codes = trace_codes(4)
    ok(cast.dispense(rx, line(METFORMIN, 4, codes=codes)))  # retried after the release, then recorded
    assert failed == [1]
    stream = events_of(shards[GLOBAL], trace_code_id_for(codes[0]))
    assert [type(e).__name__ for e in stream] == ["TraceCodeSold", "TraceCodeReturned", "TraceCodeSold"]
    assert stream[1].reason == RELEASE_REASON and stream[2].prescription_id == rx
    assert sum(isinstance(e, PrescriptionDispensed) for e in events_of(shards[CHANGCHUN], rx)) == 1


def test_withdrawn_dispense_returns_codes_in_the_global_store(app: RxTrail, casts: dict[str, Cast],
                                                              shards: dict[str, str]) -> None:
    cast = casts[JINAN]
    rx = cast.accepted()
    codes = trace_codes(4)
    ok(cast.dispense(rx, line(METFORMIN, 4, codes=codes)))
    ok(app.handle(c.WithdrawDispense(prescription_id=rx, dispense_no=1, reason="wrong strength")))
    assert [type(e).__name__ for e in events_of(shards[GLOBAL], trace_code_id_for(codes[0]))] == [
        "TraceCodeSold", "TraceCodeReturned"]
    # returned codes can be sold again, in the other region
    other = casts[CHANGCHUN].accepted()
    ok(casts[CHANGCHUN].dispense(other, line(METFORMIN, 4, codes=codes)))


# --- relays per shard into one topic; projections equal the union of the stores -------------------------------


def union_reference(reference_db: str, stores: list[str]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Every projection built straight from every store's events (each store in its notification order)."""
    with psycopg.connect(reference_db, autocommit=True) as conn:
        for name in registry.NAMES:
            projection = registry.build(name)
            with conn.transaction():
                ensure_schema(conn, projection, name)
            for url in stores:
                with psycopg.connect(url) as reader:
                    for table in discover_logs(reader):
                        for rows in pages(reader, table, 1000):
                            with conn.transaction():
                                apply_batch(conn, projection, name, [decode_stored(*row) for row in rows])
    return dump_all(reference_db, registry.NAMES)


def list_catalogued(cast: Cast) -> None:
    """The registry facts of the reference metformin in the cast's region, as the authority seeds them from
    services/reference: listed (category A) with its cap and payment standard 11.25 (once per region)."""
    by = {"changed_by": f"agency:{cast.region}", "effective_from": date(2024, 1, 1)}
    facts: list[c.Command] = [
        c.ListDrug(changed_by=REGULATOR, effective_from=date(2024, 1, 1), drug_code=CATALOGUED, name="metformin",
                   category=CatalogCategory.A, chronic_list=True),
        c.SetPriceCap(**by, drug_code=CATALOGUED, region=cast.region, cap=Decimal("11.25")),  # type: ignore[arg-type]
        c.SetPaymentStandard(**by, drug_code=CATALOGUED, region=cast.region, amount=Decimal("11.25"))]  # type: ignore[arg-type]
    for command in facts:
        outcome = cast.app.handle(command)
        assert outcome.ok or outcome.error == "AlreadyExists", outcome


def collected_in_catalog(cast: Cast) -> UUID:
    """A prescription of a drug in both regions' catalogues (the settlement worker settles it), collected."""
    list_catalogued(cast)
    rx = cast.accepted(item(CATALOGUED, 4))
    ok(cast.dispense(rx, line(CATALOGUED, 4, codes=4)))
    ok(cast.app.handle(c.MarkCollected(prescription_id=rx, verification_method=RealNameMethod.FACE_RECOGNITION)))
    return rx


def stored_versions(urls: list[str]) -> int:
    """Sum over aggregates of their last version, across the stores (what stream_versions adds up to)."""
    total = 0
    for url in urls:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT coalesce(sum(v), 0) FROM (SELECT max(originator_version) AS v FROM "
                               "rxtrail_events GROUP BY originator_id) s").fetchone()
            total += int(row[0]) if row else 0
    return total


async def test_relays_per_shard_and_projections_equal_the_union(app: RxTrail, casts: dict[str, Cast],
                                                               settings: Settings, shards: dict[str, str],
                                                               kafka_bootstrap: str,
                                                               make_database: Callable[[], str]) -> None:
    """Traffic in both regions; the settlement worker settles it through the same ``ShardRouter`` (its commands go
    to each prescription's region); one relay per store into one topic; the projections (bootstrap's
    ``run_projections``, in the global database) end equal to the projections built from the union of the stores."""
    collected: list[UUID] = []
    for cast in casts.values():
        for _ in range(3):
            collected.append(await asyncio.to_thread(collected_in_catalog, cast))
        await asyncio.to_thread(cast.approved)
    topic = unique_topic("rx.events.shards")
    live = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "events_topic": topic,
                                       "dlq_topic": topic + ".dlq", "partitions": 3})
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    urls = shard_database_urls(live)
    assert set(urls) == {GLOBAL, CHANGCHUN, JINAN}
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(run_relay(relay_config(live, database_url=url, name=f"relay-{shard}"), stop))
        for shard, url in urls.items()]
    settlement = build_settlement(live, app, group_id=unique_id("settle"), schema=unique_id("settle").lower())
    tasks.append(asyncio.create_task(settlement.run(stop)))
    tasks.append(asyncio.create_task(run_projections(registry.NAMES, live, stop)))

    def settled_and_caught_up() -> bool:
        if not all(any(isinstance(e, PrescriptionSettled) for e in app.history(rx)) for rx in collected):
            return False
        expect = stored_versions(list(urls.values()))
        return all(applied_versions(shards[GLOBAL], name) == expect for name in registry.NAMES)

    try:
        await wait_until_async(lambda: asyncio.to_thread(settled_and_caught_up), timeout=90, interval=0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for rx in collected:  # settled in its own region's store, by the worker
        region = app.directory.shard_of(rx)  # type: ignore[attr-defined]
        assert region in (CHANGCHUN, JINAN)
        assert any(isinstance(e, PrescriptionSettled) for e in events_of(shards[region], rx))
    with psycopg.connect(shards[CHANGCHUN]) as a, psycopg.connect(shards[JINAN]) as b:
        # notification ids are per shard: both logs start at 1 (no global order across shards)
        assert a.execute("SELECT min(notification_id) FROM rxtrail_events").fetchone()[0] == 1  # type: ignore[index]
        assert b.execute("SELECT min(notification_id) FROM rxtrail_events").fetchone()[0] == 1  # type: ignore[index]
    got = dump_all(shards[GLOBAL], registry.NAMES)
    reference = await asyncio.to_thread(union_reference, make_database(), list(urls.values()))
    assert differences(got, reference) == {}
    assert sum(len(rows) for tables in got.values() for rows in tables.values()) > 0
    with psycopg.connect(shards[GLOBAL]) as conn:
        regions = {r[0] for r in conn.execute("SELECT DISTINCT pooling_region FROM traceability.visits")}
    assert {CHANGCHUN, JINAN} <= regions


# --- the API over the shards -----------------------------------------------------------------------------------


def test_the_api_writes_each_region_to_its_shard_and_refuses_a_code_across_regions(
        app: RxTrail, casts: dict[str, Cast], settings: Settings, shards: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from services.api import create_app
    from tests.support.flows import Actors, api_keys, dispense_body

    actors = {}
    live = build_application(settings)  # on the system clock, as the HTTP bodies are dated today
    try:
        with TestClient(create_app(settings, application=live)) as client:
            for region, cast in casts.items():
                keys = api_keys(shards[GLOBAL], f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                                f"pharmacy:{cast.pharmacy}", f"agency:{region}", "regulator:REG1")
                actors[region] = Actors(client, cast, keys)
            first, second = actors[CHANGCHUN].accepted(), actors[JINAN].accepted()
            assert streams_in(shards[CHANGCHUN], UUID(first)) > 0 and streams_in(shards[JINAN], UUID(first)) == 0
            assert streams_in(shards[JINAN], UUID(second)) > 0 and streams_in(shards[CHANGCHUN], UUID(second)) == 0
            codes = trace_codes(4)
            cc, jn = actors[CHANGCHUN], actors[JINAN]
            r = cc.post(cc.pharmacy, f"/pharmacy/prescriptions/{first}/dispenses", dispense_body(4, codes))
            assert r.status_code == 201, r.text
            r = jn.post(jn.pharmacy, f"/pharmacy/prescriptions/{second}/dispenses", dispense_body(4, codes))
            assert r.status_code == 409 and r.json()["rule"] == "R8", r.text
            # reads across shards: each pharmacy sees its own prescription (read from its region's store)
            assert jn.get(jn.pharmacy, f"/pharmacy/prescriptions/{second}").json()["status"] == "accepted"
            assert cc.get(cc.pharmacy, f"/pharmacy/prescriptions/{first}").json()["status"] == "dispensed"
    finally:
        live.close()
    flags = [e for e in events_of(shards[JINAN], UUID(second)) if isinstance(e, RuleFlagged)]
    assert [f.rule_id for f in flags] == ["R8"]


def test_statements_find_each_party_region_across_shards(app: RxTrail, casts: dict[str, Cast],
                                                         settings: Settings) -> None:
    from events.statement import PartyKind
    from services.bootstrap import build_statement_desk

    for cast in casts.values():
        ok(app.handle(cast.visit()))  # a hospital's region comes from its visits, which live in its region shard
    desk, store = build_statement_desk(settings)
    try:
        wanted = [(PartyKind.HOSPITAL, cast.hospital) for cast in casts.values()]
        wanted += [(PartyKind.PHARMACY, cast.pharmacy) for cast in casts.values()]
        found = desk.directory.regions(wanted)
    finally:
        store.close()
    assert found == {(PartyKind.HOSPITAL, casts[CHANGCHUN].hospital): CHANGCHUN,
                     (PartyKind.HOSPITAL, casts[JINAN].hospital): JINAN,
                     (PartyKind.PHARMACY, casts[CHANGCHUN].pharmacy): CHANGCHUN,
                     (PartyKind.PHARMACY, casts[JINAN].pharmacy): JINAN}


def test_rxtrail_run_relay_starts_one_relay_per_store(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from services import bootstrap
    from services.relay import core

    started: list[tuple[str, str]] = []

    async def fake_run_relay(config: Any, stop: asyncio.Event) -> None:
        started.append((config.name, config.database_url))

    monkeypatch.setattr(core, "run_relay", fake_run_relay)
    service = bootstrap.build_service("relay", settings)
    asyncio.run(service.run(asyncio.Event()))  # type: ignore[arg-type]
    assert sorted(started) == sorted([(settings.relay.name, settings.resolved_database_url()),
                                      (f"{settings.relay.name}-{CHANGCHUN}", settings.shards[CHANGCHUN]),
                                      (f"{settings.relay.name}-{JINAN}", settings.shards[JINAN])])


def test_a_reservation_left_by_a_writer_that_stopped_is_released_by_the_repair_job(
        app: RxTrail, casts: dict[str, Cast], settings: Settings, shards: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.application.sharding import STRANDED_REASON
    from services.bootstrap import release_stranded_reservations

    assert isinstance(app, ShardRouter)
    cast = casts[JINAN]
    stranded, recorded = cast.accepted(), cast.accepted()
    region_store = app.regions[JINAN].store
    assert isinstance(region_store, RegionStore)
    home_save = region_store.home.save

    def process_dies(*objs: Any, **kwargs: Any) -> Any:
        raise SystemExit("simulated: the process stopped between the global and the region write")

    monkeypatch.setattr(region_store.home, "save", process_dies)
    lost = trace_codes(4)
    with pytest.raises(SystemExit):
        cast.dispense(stranded, line(METFORMIN, 4, codes=lost))
    monkeypatch.setattr(region_store.home, "save", home_save)
    kept = trace_codes(4)
    ok(cast.dispense(recorded, line(METFORMIN, 4, codes=kept)))
    # the stranded codes are held (refused elsewhere), though no dispense lists them
    other = casts[CHANGCHUN].accepted()
    assert casts[CHANGCHUN].dispense(other, line(METFORMIN, 4, codes=lost)).rule_id == "R8"

    assert release_stranded_reservations(settings, app, older_than_s=3600) == []  # too recent: maybe in flight
    released = release_stranded_reservations(settings, app, older_than_s=-1)
    assert set(released) == {trace_code_id_for(code) for code in lost}
    last = events_of(shards[GLOBAL], trace_code_id_for(lost[0]))[-1]
    assert isinstance(last, TraceCodeReturned) and last.reason == STRANDED_REASON
    assert isinstance(events_of(shards[GLOBAL], trace_code_id_for(kept[0]))[-1], TraceCodeSold)
    ok(cast.dispense(stranded, line(METFORMIN, 4, codes=lost)))  # the pharmacy can now record its dispense


async def test_a_stranded_reservation_is_released_by_the_running_expiry_service(
        app: RxTrail, casts: dict[str, Cast], settings: Settings, shards: dict[str, str], kafka_bootstrap: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`rxtrail run expiry` with region shards also runs the repair job every ``expiry.stranded_interval_s``: a sale
    whose process stopped between the global and the region write is released without anyone calling it."""
    from services import bootstrap
    from services.application.sharding import STRANDED_REASON

    assert isinstance(app, ShardRouter)
    cast = casts[CHANGCHUN]
    stranded = cast.accepted()
    region_store = app.regions[CHANGCHUN].store
    assert isinstance(region_store, RegionStore)

    def process_dies(*objs: Any, **kwargs: Any) -> Any:
        raise SystemExit("simulated: the process stopped between the global and the region write")

    monkeypatch.setattr(region_store.home, "save", process_dies)
    lost = trace_codes(3)
    with pytest.raises(SystemExit):
        cast.dispense(stranded, line(METFORMIN, 3, codes=lost))
    monkeypatch.undo()
    code_id = trace_code_id_for(lost[0])
    assert isinstance(events_of(shards[GLOBAL], code_id)[-1], TraceCodeSold)

    # the service's clock is the system's; the sale was made at NOW (the module's fixed clock), months ago
    lookback = (datetime.now(UTC) - NOW).total_seconds() + 86400
    live = settings.model_copy(update={
        "kafka_bootstrap": kafka_bootstrap, "events_topic": unique_topic("rx.events.expiry"),
        "dlq_topic": unique_topic("rx.dlq.expiry"), "partitions": 1,
        "expiry": settings.expiry.model_copy(update={"group_id": unique_id("expiry"), "stranded_interval_s": 0.2,
                                                      "stranded_age_s": 1.0, "stranded_lookback_s": lookback})})
    service = bootstrap.build_service("expiry", live)
    stop = asyncio.Event()
    running = asyncio.ensure_future(service.run(stop))
    try:
        def released() -> TraceCodeReturned | None:
            last = events_of(shards[GLOBAL], code_id)[-1]
            return last if isinstance(last, TraceCodeReturned) else None

        last = await wait_until_async(released, timeout=60,
                                      what="the stranded code released by the running expiry service")
        assert last is not None and last.reason == STRANDED_REASON
        assert not running.done()
    finally:
        stop.set()
        await running
        service.close()
    assert all(isinstance(events_of(shards[GLOBAL], trace_code_id_for(code))[-1], TraceCodeReturned) for code in lost)
    ok(cast.dispense(stranded, line(METFORMIN, 3, codes=lost)))


# --- workers read version gaps from every store ----------------------------------------------------------------


async def test_workers_read_a_gap_on_a_region_shard_from_that_shard(app: RxTrail, casts: dict[str, Cast],
                                                                    settings: Settings, shards: dict[str, str],
                                                                    kafka_bootstrap: str) -> None:
    """A Jinan prescription's first event never reached the topic. The router meets the gap at the approval and
    reads the missing version from Jinan's store (bootstrap gives the router, gateway and expiry configs every
    store's ``MissingEvents`` when sharded; before, they read the global store only and waited for good) and
    applies both versions."""
    from events.envelope import event_id
    from services.adapters.shard_events import ShardedStoreEvents
    from services.bootstrap import expiry_config, gateway_config, router_config
    from services.workers.router import run_router
    from tests.support.kafka import header, read_all
    from tests.support.pipeline import copy_topic

    rx = await asyncio.to_thread(casts[JINAN].approved, item(METFORMIN, 2))
    assert app.directory.shard_of(rx) == JINAN  # type: ignore[attr-defined]
    source, gapped = unique_topic("rx.events.full"), unique_topic("rx.events.gap")
    live = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "events_topic": source,
                                       "dlq_topic": source + ".dlq", "partitions": 3})
    await ensure_topics_async(kafka_bootstrap, [source, source + ".dlq", gapped + ".dlq"], partitions=3)
    urls = shard_database_urls(live)
    stop = asyncio.Event()
    relays = [asyncio.create_task(run_relay(relay_config(live, database_url=url, name=unique_id("relay")), stop))
              for url in urls.values()]
    expect = stored_versions(list(urls.values()))  # one record per stored event
    try:
        for _ in range(120):  # every stored event on the source topic
            if len({header(r, "event_id") for r in await read_all(kafka_bootstrap, source)}) >= expect:
                break
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*relays)
    lost = event_id(rx, 1)
    copied = await copy_topic(kafka_bootstrap, source, gapped, keep=lambda r: header(r, "event_id") != lost)
    assert copied >= expect - 1

    gapped_settings = live.model_copy(update={"events_topic": gapped, "dlq_topic": gapped + ".dlq"})
    config = router_config(gapped_settings, group_id=unique_id("router"), schema=unique_id("router").lower())
    for worker_config in (config, gateway_config(gapped_settings), expiry_config(gapped_settings)):
        assert isinstance(worker_config.missing, ShardedStoreEvents)
        assert {r.database_url for r in worker_config.missing.readers} == set(urls.values())
    stop = asyncio.Event()
    router = asyncio.create_task(run_router(config, stop, app))

    def applied() -> int:  # the router's own record of the prescription's versions
        with psycopg.connect(shards[GLOBAL]) as conn:
            try:
                row = conn.execute(f'SELECT version FROM "{config.schema}".stream_versions WHERE aggregate_id = %s',
                                   (rx,)).fetchone()
            except psycopg.errors.UndefinedTable:  # the router has not made its tables yet
                return 0
        return int(row[0]) if row else 0

    try:  # v1 read from Jinan's store, then the approval (v2) applied
        await wait_until_async(lambda: asyncio.to_thread(applied), timeout=60, interval=0.5)
        assert await asyncio.to_thread(applied) == 2
    finally:
        stop.set()
        await router
