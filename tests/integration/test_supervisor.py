"""`rxtrail up`'s supervisor on real parts: a supervisor you can leave running (issue 12, item 3).

One stack (`rxtrail up` in the foreground, embedded PostgreSQL and Tansu, small backoff through settings) for the
module, in order: a projection SIGKILLed 8 times is restarted every time while the other projections keep their
processes and keep applying; `stack.json` and `rxtrail status` follow the current pids; two `rxtrail replay`s
during traffic, with the projections killed in between, exit 0 and lose nothing (every projection equals a rebuild
from the store); `/health` and `rxtrail status` show each stage's lag and last error; SIGKILL of the supervisor
takes every child down (services, PostgreSQL, Tansu) and frees their ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from projections import registry
from services.infra.ports import free_ports
from tests.faults import harness
from tests.support import wait_until

CLI = [sys.executable, "-m", "services.cli"]
VICTIM = "projection:pharmacy_settlement"
OTHERS = [f"projection:{n}" for n in registry.NAMES if f"projection:{n}" != VICTIM]


@dataclass
class UpStack:
    """What the fault harness's traffic and end-state checks need of a stack, for one started by `rxtrail up`."""

    env: dict[str, str]
    proc: subprocess.Popen[str]
    kills: dict[str, int] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return Path(self.env["RXTRAIL_DATA_DIR"])

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.env['RXTRAIL_POSTGRES_PORT']}/rxtrail"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['RXTRAIL_KAFKA_PORT']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['RXTRAIL_API_PORT']}"

    def settings(self) -> Any:
        from services.infra.settings import Settings

        return Settings(database_url=self.database_url, kafka_bootstrap=self.bootstrap, data_dir=self.data,
                        api_port=int(self.env["RXTRAIL_API_PORT"]))

    def state(self) -> dict[str, Any]:
        return json.loads((self.data / "stack.json").read_text())  # type: ignore[no-any-return]

    def pid(self, name: str) -> int | None:
        pid = self.state()["services"].get(name)
        return int(pid) if pid is not None and _alive(int(pid)) else None

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def kill(self, name: str) -> int:
        """SIGKILL the service's current process; returns its pid."""
        pid = wait_until(lambda: self.pid(name), timeout=30, ignore=(OSError, ValueError),
                         what=f"{name} to run")
        os.kill(pid, signal.SIGKILL)
        self.kills[name] = self.kills.get(name, 0) + 1
        return pid

    def restarted(self, name: str, old: int, timeout: float = 30) -> int:
        """The service's new pid once the supervisor restarted it (and wrote it to stack.json)."""
        return wait_until(lambda: (p := self.pid(name)) is not None and p != old and p, timeout=timeout,
                          interval=0.1, ignore=(OSError, ValueError), what=f"the supervisor to restart {name}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*CLI, "up"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("rxtrail ready:"):
            return proc
        if not line and proc.poll() is not None:
            raise AssertionError(f"rxtrail up exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    proc.kill()
    raise AssertionError("rxtrail up: no ready line within 90 s")


@pytest.fixture(scope="module")
def stack() -> Iterator[UpStack]:
    data = Path("/var/tmp") / f"rxtrail-supervisor-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ)
    for name in ("RXTRAIL_DATABASE_URL", "RXTRAIL_KAFKA_BOOTSTRAP", "RXTRAIL_PSEUDONYM_SECRET"):
        env.pop(name, None)
    env.update({"RXTRAIL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", "COLUMNS": "250",
                "RXTRAIL_PARTITIONS": "3",
                "RXTRAIL_SUPERVISOR__POLL_S": "0.1",
                "RXTRAIL_SUPERVISOR__BACKOFF_INITIAL_S": "0.1",
                "RXTRAIL_SUPERVISOR__BACKOFF_MAX_S": "0.8",
                "RXTRAIL_SUPERVISOR__HEALTHY_AFTER_S": "30",
                "RXTRAIL_RELAY__POLL_INTERVAL_S": "0.2",
                # the stack's own start waits (PostgreSQL, broker, the API's workers listening) as long as _start
                # waits for the ready line: on a loaded machine the API's workers took longer than the default 30 s
                "RXTRAIL_START_TIMEOUT_S": "80"})
    proc: subprocess.Popen[str] | None = None
    for _attempt in range(5):
        postgres, kafka, api = free_ports(3)
        env.update({"RXTRAIL_POSTGRES_PORT": str(postgres), "RXTRAIL_KAFKA_PORT": str(kafka),
                    "RXTRAIL_API_PORT": str(api)})
        try:
            proc = _start(env)
            break
        except AssertionError as exc:
            if "is already taken" not in " ".join(str(exc).split()):
                raise
    assert proc is not None
    up = UpStack(env, proc)
    try:
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.environ.get("RXTRAIL_SUPERVISOR_KEEP") != "1":
            shutil.rmtree(data, ignore_errors=True)


def _lag(stack: UpStack) -> dict[str, Any]:
    r = httpx.get(f"{stack.api_url}/health", timeout=10)
    assert r.status_code == 200, r.text
    return {name: s["lag"] for name, s in r.json()["stages"].items()}


def test_a_child_killed_eight_times_is_still_restarted_and_the_others_keep_running(stack: UpStack) -> None:
    others = {name: stack.pid(name) for name in OTHERS}
    assert all(others.values()), others
    pid = stack.kill(VICTIM)
    for _ in range(7):
        pid = stack.restarted(VICTIM, pid)
        stack.kill(VICTIM)
    current = stack.restarted(VICTIM, pid)
    state = stack.state()
    assert state["restarts"][VICTIM] >= 8, state
    assert "SIGKILL" in state["last_exit"][VICTIM]
    # the other projections were never touched: same processes
    assert {name: stack.pid(name) for name in OTHERS} == others
    # `rxtrail status` shows the current pid as running (not the first one as DOWN)
    s = stack.cli("status", timeout=60)
    assert s.returncode == 0, s.stderr
    line = next(x for x in s.stdout.splitlines() if x.strip().startswith(VICTIM))
    assert f"pid={current} running" in line and "restarts=" in line, s.stdout
    assert "DOWN" not in s.stdout, s.stdout


def test_replay_twice_during_traffic_with_restarts_in_between_loses_nothing(stack: UpStack) -> None:
    cast = harness.register_cast(stack)  # type: ignore[arg-type]
    traffic = harness.Traffic(stack, cast, clients=2, max_journeys=40, max_seconds=60,  # type: ignore[arg-type]
                              route_wait_s=45).start()
    try:
        wait_until(lambda: traffic.stats.journeys_done >= 3, timeout=90, interval=0.5,
                   what=lambda: f"traffic to get going ({traffic.stats.line()}; {traffic.stats.errors[:2]})")
        first = stack.cli("replay", "all")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        # restarts in between: every projection killed once, and the victim twice
        for name in [*OTHERS, VICTIM]:
            stack.restarted(name, stack.kill(name))
        stack.restarted(VICTIM, stack.kill(VICTIM))
        assert traffic.running(), "the traffic ended before the second replay"
        second = stack.cli("replay", "all")
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert traffic.running() or traffic.stats.journeys_done > 5
    finally:
        stats = traffic.join(180)
    assert stats.journeys_done >= 5, stats.line()
    settled, waited = harness.wait_settled(stack, timeout=120)  # type: ignore[arg-type]
    assert settled, f"not settled after {waited:.0f}s: {harness.lagging_streams(stack.database_url)}"
    problems, rows = harness.compare_with_rebuild(stack.database_url)
    assert not problems, problems
    assert rows > 0
    assert all(lag == 0 for name, lag in _lag(stack).items() if name.startswith("projection:")), _lag(stack)


def test_health_and_status_show_each_stage_lag_and_last_error(stack: UpStack) -> None:
    wait_until(lambda: all(v == 0 for k, v in _lag(stack).items() if k == "relay" or k.startswith("projection:")),
               timeout=60, interval=0.5, what=lambda: f"every stage to catch up: {_lag(stack)}")
    health = httpx.get(f"{stack.api_url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["database"] is True
    stages = health["stages"]
    for name in ["relay", "router", "settlement", "gateway", *[f"projection:{n}" for n in registry.NAMES]]:
        assert name in stages, sorted(stages)
        assert isinstance(stages[name]["lag"], int), (name, stages[name])
        assert stages[name]["pid"], (name, stages[name])
    victim = stages[VICTIM]
    assert victim["restarts"] >= 10 and victim["pid"] == stack.pid(VICTIM)
    assert "killed by SIGKILL" in victim["last_exit"] and victim["last_exit_at"]
    assert victim["last_error"] and victim["last_error_at"]  # its exit, or a warning of its own since
    assert stages["api"]["last_exit"] is None
    s = stack.cli("status", timeout=60)
    assert s.returncode == 0, s.stderr
    line = next(x for x in s.stdout.splitlines() if x.strip().startswith(VICTIM))
    assert "lag=0" in line and "last_error@" in line and "killed by SIGKILL" in line, s.stdout  # error or exit
    relay = next(x for x in s.stdout.splitlines() if x.strip().startswith("relay "))
    assert "lag=0" in relay and "running" in relay, s.stdout


async def test_a_replay_swapped_in_under_a_running_consumer_is_continued_from_its_offsets(
        stack: UpStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst case, made deterministic: the replay captures the topic's end offsets, then the live consumer
    applies more events (B) to the old view before the swap. The rebuilt view holds only what came before B, with
    offsets before B: the live consumer must notice the swap through the database and read B again."""
    import asyncio

    from projections.base import ProjectionConsumer
    from services import replay as replay_module
    from services.infra.kafka_admin import ensure_topics_async
    from services.simulate import all_events, make_trails
    from tests.support import unique_id, unique_topic
    from tests.support.trails import applied_versions, differences, dump, publish, run_to_idle, version_total

    trails = make_trails(8, seed=11)
    first, later = all_events(trails[:5]), all_events(trails[5:])
    topic = unique_topic("sup.events")
    schema = unique_id("sup_live").replace("-", "_").lower()
    db, bootstrap = stack.database_url, stack.bootstrap
    await ensure_topics_async(bootstrap, [topic, topic + ".dlq"], partitions=3)
    await publish(bootstrap, topic, first)
    stop = asyncio.Event()
    live = ProjectionConsumer(registry.build("traceability"), db, bootstrap, schema=schema, topic=topic,
                              dlq_topic=topic + ".dlq", group_id=unique_id("sup.g"), check_interval_s=2.0)
    running = asyncio.create_task(live.run(stop))

    async def applied(want: int, what: str) -> None:
        deadline = time.monotonic() + 60
        while applied_versions(db, schema) != want:
            assert not running.done(), running.exception()
            assert time.monotonic() < deadline, f"{what}: applied {applied_versions(db, schema)} of {want}"
            await asyncio.sleep(0.2)

    await applied(version_total(first), "the live consumer to apply the first events")
    ends = replay_module._ends

    async def ends_then_more(consumer: Any, tps: list[Any], timeout_s: float = 15.0) -> dict[Any, int]:
        captured = await ends(consumer, tps, timeout_s)
        await publish(bootstrap, topic, later, first_notification=len(first) + 1)
        await applied(version_total(first + later), "the live consumer to apply the later events (old view)")
        return captured

    monkeypatch.setattr(replay_module, "_ends", ends_then_more)
    try:
        [result] = await replay_module.replay_async("traceability", db, bootstrap, topic=topic, schema=schema,
                                                    progress=False)
        assert result.read == len(first)  # the rebuilt view stops before the later events
        await applied(version_total(first + later), "the live consumer to apply the later events again (rebuilt view)")
    finally:
        stop.set()
        await running
    reference = unique_id("sup_ref").replace("-", "_").lower()
    await run_to_idle(registry.build("traceability"), db, bootstrap, topic, schema=reference)
    assert differences({"v": dump(db, schema)}, {"v": dump(db, reference)}) == {}


def test_lag_counts_every_event_store_of_a_sharded_write_side(stack: UpStack) -> None:
    """With ``settings.shards`` each region's store has its own relay (``relay-<region>``): the relay's lag and the
    consumers' lag count every store; a shard that does not answer makes the lags unknown, not zero."""
    import psycopg

    from services.adapters.stage_health import consumer_stages, shard_stores, stage_report
    from services.infra.settings import Settings

    shard_db = f"rxtrail_shard_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    with psycopg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{shard_db}"')
    shard_url = stack.database_url.rsplit("/", 1)[0] + f"/{shard_db}"
    with psycopg.connect(shard_url, autocommit=True) as shard:
        shard.execute("CREATE TABLE region_events (notification_id bigint PRIMARY KEY)")
        shard.execute("INSERT INTO region_events SELECT generate_series(1, 5)")
        shard.execute("CREATE TABLE relay_position (name text, log text, position bigint, PRIMARY KEY (name, log))")
        shard.execute("INSERT INTO relay_position VALUES ('relay-990000', 'region_events', 2)")
    settings = Settings(database_url=stack.database_url, shards={"990000": shard_url, "990100": shard_url})
    assert shard_stores(settings) == {"990000": shard_url}  # one relay per database, as bootstrap runs them
    with psycopg.connect(stack.database_url) as conn:
        alone = stage_report(conn, consumer_stages(settings))
        sharded = stage_report(conn, consumer_stages(settings), shards=shard_stores(settings))
        unreachable = stage_report(conn, consumer_stages(settings), shards={"990000": "postgresql://u@127.0.0.1:1/x"})
    assert sharded["relay"]["lag"] == alone["relay"]["lag"] + 3
    assert sharded["projection:traceability"]["lag"] == alone["projection:traceability"]["lag"] + 5
    assert unreachable["relay"]["lag"] is None and unreachable["projection:traceability"]["lag"] is None


def test_a_stage_records_the_errors_it_survives(stack: UpStack) -> None:
    """What `rxtrail run` installs (services.bootstrap.run_service): the stage's own warnings become its last_error,
    and the supervisor's record of its exits stays apart (last_exit)."""
    import logging

    from services.adapters.stage_health import ErrorRecorder

    recorder = ErrorRecorder(stack.database_url, "projection:traceability", interval_s=0.1)
    logger = logging.getLogger("services.test_supervisor")
    logger.addHandler(recorder)
    try:
        logger.warning("the record does not hold v%d of %s yet; the batch waits", 3, "abc")
        logging.getLogger("aiokafka.consumer").warning("not one of rxtrail's: never recorded")

        def recorded() -> dict[str, Any] | None:
            stage = httpx.get(f"{stack.api_url}/health", timeout=10).json()["stages"]["projection:traceability"]
            return stage if "the batch waits" in (stage["last_error"] or "") else None

        stage = wait_until(recorded, timeout=15, interval=0.2, what="the warning to be recorded")
    finally:
        logger.removeHandler(recorder)
    assert stage["last_error"] == "WARNING services.test_supervisor: the record does not hold v3 of abc yet; " \
                                  "the batch waits"
    assert "killed by SIGKILL" in stage["last_exit"]  # killed in the replay test; the exit is kept apart
    s = stack.cli("status", timeout=60)
    line = next(x for x in s.stdout.splitlines() if x.strip().startswith("projection:traceability"))
    assert "the batch waits" in line and "last_exit@" in line and "killed by SIGKILL" in line, s.stdout


def test_the_embedded_postgres_killed_is_restarted_and_every_stage_recovers(stack: UpStack) -> None:
    pidfile = stack.data / "postgres" / "postmaster.pid"
    first = int(pidfile.read_text().splitlines()[0])
    os.kill(first, signal.SIGKILL)

    def healthy() -> dict[str, Any] | None:
        pid = int(pidfile.read_text().splitlines()[0])
        if pid == first or not _alive(pid):
            return None
        r = httpx.get(f"{stack.api_url}/health", timeout=10)
        body = r.json() if r.status_code == 200 else {}
        return body if body.get("database") is True else None

    wait_until(healthy, timeout=60, interval=0.5, ignore=(OSError, ValueError, IndexError, httpx.HTTPError),
               what="the supervisor to restart PostgreSQL and the API to see it")
    cast = harness.register_cast(stack)  # type: ignore[arg-type]  # new events after the restart
    assert cast.keys
    wait_until(lambda: all(v == 0 for k, v in _lag(stack).items() if k == "relay" or k.startswith("projection:")),
               timeout=90, interval=0.5, ignore=(httpx.HTTPError, KeyError),
               what=lambda: f"every stage to catch up after the restart: {_lag(stack)}")
    wait_until(lambda: all(stack.pid(name) for name in stack.state()["services"]), timeout=30, interval=0.3,
               ignore=(OSError, ValueError), what=lambda: f"every service to run again: {stack.state()}")


def test_sigkill_of_the_supervisor_takes_every_child_down(stack: UpStack) -> None:
    state = stack.state()
    children = [int(p) for p in state["services"].values() if p]
    pg = int((stack.data / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    tansu = int((stack.data / "tansu.pid").read_text())
    assert all(_alive(p) for p in [*children, pg, tansu])
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait(10)

    def alive() -> list[int]:
        return [p for p in [*children, pg, tansu] if _alive(p)]

    wait_until(lambda: not alive(), timeout=30, interval=0.2, what=lambda: f"the children to die: {alive()}")
    ports = [int(stack.env[k]) for k in ("RXTRAIL_API_PORT", "RXTRAIL_POSTGRES_PORT", "RXTRAIL_KAFKA_PORT")]
    wait_until(lambda: all(_port_free(p) for p in ports), timeout=15, interval=0.2,
               what=lambda: f"the ports to be free: {[p for p in ports if not _port_free(p)]}")
    with contextlib.suppress(OSError):
        (stack.data / "stack.json").unlink()
