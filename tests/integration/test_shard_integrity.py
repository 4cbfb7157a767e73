"""The integrity tools with region shards (deploy/SCALING.md), run as an operator would (`python -m services.cli`):
`rxtrail checkpoint` signs each event store's head in its own database (the payload names the store), `rxtrail
verify` checks every store against its own chain and the copies on ``rx.checkpoints`` (each finding names its
store), and `rxtrail replay --from-store` rebuilds the projections from every store. Real PostgreSQL: three
databases stand in for the global store and the Changchun and Jinan shards; Kafka for the checkpoint copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from projections import registry
from services.application import RxTrail
from services.application.sharding import GLOBAL
from services.bootstrap import build_application, shard_database_urls
from services.domain.clock import FixedClock
from services.infra.settings import Settings
from services.integrity.checkpoint import all_checkpoints
from services.integrity.verify import ShardedReport, verify
from services.integrity.witness import load_witness
from tests.integration.test_sharding import NOW, collected_in_catalog, union_reference
from tests.support import unique_topic
from tests.support.cast import CHANGCHUN, JINAN, SECRET, Cast
from tests.support.trails import differences, dump_all


@pytest.fixture(scope="module")
def shards(make_database: Callable[[], str]) -> dict[str, str]:
    return {GLOBAL: make_database(), CHANGCHUN: make_database(), JINAN: make_database()}


@pytest.fixture(scope="module")
def settings(shards: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=shards[GLOBAL], pseudonym_secret=SECRET, data_dir=tmp_path_factory.mktemp("keys"),
                    shards={CHANGCHUN: shards[CHANGCHUN], JINAN: shards[JINAN]})


@pytest.fixture(scope="module")
def trails(settings: Settings) -> Iterator[dict[str, UUID]]:
    """One collected prescription in each region (and the registries in the global store)."""
    app: RxTrail = build_application(settings, clock=FixedClock(NOW))
    try:
        yield {region: collected_in_catalog(Cast(app, region=region).register()) for region in (CHANGCHUN, JINAN)}
    finally:
        app.close()


@pytest.fixture(scope="module")
def env(settings: Settings, kafka_bootstrap: str) -> dict[str, str]:
    return {**os.environ, "RXTRAIL_DATABASE_URL": str(settings.database_url), "RXTRAIL_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "RXTRAIL_DATA_DIR": str(settings.data_dir), "RXTRAIL_PSEUDONYM_SECRET": SECRET.decode(),
            "RXTRAIL_SHARDS": json.dumps(settings.shards),
            "RXTRAIL_CHECKPOINTS_TOPIC": unique_topic("rx.checkpoints.shards"), "COLUMNS": "200"}


def rxtrail(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_checkpoint_and_verify_cover_every_shard(env: dict[str, str], settings: Settings, trails: dict[str, UUID],
                                                 tmp_path: Path) -> None:
    witness = tmp_path / "witness.json"
    r = rxtrail(env, "checkpoint", "--export", str(witness))
    assert r.returncode == 0, r.stderr
    urls = shard_database_urls(settings)
    for store in urls:
        assert f"checkpoint {store} #1" in r.stdout
    for store, url in urls.items():  # each store's chain in its own database, naming the store
        with psycopg.connect(url) as conn:
            chain = all_checkpoints(conn)
        assert [c.body["store"] for c in chain] == [store]
        assert chain[0].body["logs"]["rxtrail_events"]["last_notification_id"] > 0
    assert sorted(c.body["store"] for c in load_witness(witness)) == sorted(urls)
    assert rxtrail(env, "checkpoint").returncode == 0  # a second round: every chain at #2

    v = rxtrail(env, "verify", "--checkpoints", str(witness))
    assert v.returncode == 0, v.stdout + v.stderr
    out = " ".join(v.stdout.split())
    assert "INTACT" in out and "in 3 event stores (global, 220100, 370100)" in out
    assert "6 signed checkpoints" in out
    for store in urls:
        assert f"{store}: latest checkpoint #2" in out
    # three chains whose ids all start at 1 share rx.checkpoints and the witness file without being confused
    assert "6 checkpoint copies from rx.checkpoints compared" in out, out
    assert "3 checkpoint copies from witness file compared" in out, out

    report = verify(str(settings.database_url), data_dir=settings.data_dir, stores=urls)
    assert isinstance(report, ShardedReport) and report.ok
    assert set(report.stores) == set(urls)
    assert report.events == sum(part.events for part in report.stores.values()) > 0
    assert all(part.events > 0 and part.checkpoints == 2 for part in report.stores.values())


def test_verify_names_the_shard_of_a_tampered_event(env: dict[str, str], settings: Settings,
                                                   trails: dict[str, UUID]) -> None:
    rx = trails[JINAN]
    jinan = shard_database_urls(settings)[JINAN]
    assert rxtrail(env, "checkpoint").returncode == 0
    with psycopg.connect(jinan, autocommit=True) as conn:
        original = conn.execute("SELECT state FROM rxtrail_events WHERE originator_id = %s AND originator_version = 2",
                                (rx,)).fetchone()
        assert original is not None
        conn.execute("UPDATE rxtrail_events SET state = convert_to(jsonb_set(convert_from(state, 'UTF8')::jsonb, "
                     "'{note}', '\"edited\"')::text, 'UTF8') WHERE originator_id = %s AND originator_version = 2",
                     (rx,))
    try:
        r = rxtrail(env, "verify")
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 1, text
        assert f"[{JINAN}/store] {rx} v2" in text, text
        assert f"[{CHANGCHUN}/" not in text and f"[{GLOBAL}/" not in text
    finally:
        with psycopg.connect(jinan, autocommit=True) as conn:
            conn.execute("UPDATE rxtrail_events SET state = %s WHERE originator_id = %s AND originator_version = 2",
                         (original[0], rx))
    assert rxtrail(env, "verify").returncode == 0


def test_replay_from_store_reads_every_shard(env: dict[str, str], settings: Settings, trails: dict[str, UUID],
                                            make_database: Callable[[], str]) -> None:
    r = rxtrail(env, "replay", "all", "--from-store")
    assert r.returncode == 0, r.stderr
    urls = shard_database_urls(settings)
    out = " ".join(r.stdout.split())
    for name in registry.NAMES:
        assert f"{name}: " in out
    for store in urls:  # each projection's line counts what it read from each store
        assert out.count(f"from store {store}") == len(registry.NAMES), out
    got = dump_all(urls[GLOBAL], registry.NAMES)
    assert differences(got, union_reference(make_database(), list(urls.values()))) == {}
    with psycopg.connect(urls[GLOBAL]) as conn:
        regions = {row[0] for row in conn.execute("SELECT DISTINCT pooling_region FROM traceability.visits")}
    assert {CHANGCHUN, JINAN} <= regions


async def test_verify_kafka_compares_the_topic_with_the_union_of_the_stores(settings: Settings,
                                                                            trails: dict[str, UUID],
                                                                            kafka_bootstrap: str) -> None:
    """One relay per store into one topic; `verify --kafka` (``verify(bootstrap=...)``) finds every message equal
    to the stored event of its store and none missing."""
    import asyncio

    from services.bootstrap import relay_config
    from services.infra.kafka_admin import ensure_topics_async
    from services.relay.core import RelayStats, run_relay

    topic = unique_topic("rx.events.verify")
    live = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "events_topic": topic, "partitions": 3})
    await ensure_topics_async(kafka_bootstrap, [topic], partitions=3)
    urls = shard_database_urls(live)
    stop = asyncio.Event()
    stats = {store: RelayStats() for store in urls}
    relays = [asyncio.create_task(run_relay(relay_config(live, database_url=url, name=f"verify-{store}"), stop,
                                            stats[store])) for store, url in urls.items()]
    expected = await asyncio.to_thread(lambda: verify(str(settings.database_url), stores=urls).events)
    try:
        for _ in range(120):
            if sum(s.published for s in stats.values()) >= expected:
                break
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await asyncio.gather(*relays)
    report = await asyncio.to_thread(lambda: verify(str(settings.database_url), kafka_bootstrap, topic=topic,
                                                    data_dir=settings.data_dir, stores=urls))
    assert report.ok, [str(f) for f in report.findings]
    assert report.kafka_messages == report.events == expected and report.missing_on_kafka == 0


def test_export_trail_proves_each_region_prescription_under_its_own_store(env: dict[str, str], settings: Settings,
                                                                         trails: dict[str, UUID],
                                                                         tmp_path: Path) -> None:
    """`rxtrail export-trail` finds a prescription in the store of its region (not only in database_url) and proves
    it under that store's checkpoint; the bundle verifies offline with the public key alone."""
    from services.integrity.checkpoint import PUBLIC_KEY_FILE

    offline = {k: v for k, v in env.items() if not k.startswith("RXTRAIL_")}  # no database, no shards
    public_key = Path(settings.data_dir) / PUBLIC_KEY_FILE
    for region, rx in trails.items():
        out = tmp_path / f"{region}.json"
        r = rxtrail(env, "export-trail", str(rx), "--out", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        bundle = json.loads(out.read_text())
        assert bundle["aggregate_id"] == str(rx)
        assert json.loads(bundle["checkpoint"]["payload"])["store"] == region
        with psycopg.connect(settings.shards[region]) as conn:  # the region's own checkpoint chain signed it
            ids = [c.body["id"] for c in all_checkpoints(conn)]
        assert json.loads(bundle["checkpoint"]["payload"])["id"] in ids
        good = rxtrail(offline, "verify", "--bundle", str(out), "--public-key", str(public_key))
        assert good.returncode == 0 and "INTACT" in good.stdout, good.stdout + good.stderr
    missing = rxtrail(env, "export-trail", "00000000-0000-4000-8000-000000000000", "--out", str(tmp_path / "no.json"))
    assert missing.returncode != 0 and "no events for aggregate" in missing.stdout + missing.stderr
