"""`rxtrail up`: the embedded parts plus every service, supervised; a supervisor you can leave running.

- Every service is a child process (``python -m services.cli run <service>``), one per projection
  (``projection:<name>``), so one failing projection does not stop the others.
- A child that exits is restarted after an exponential backoff (``settings.supervisor``: ``backoff_initial_s``
  doubling up to ``backoff_max_s``), which starts again from ``backoff_initial_s`` once the child had run
  ``healthy_after_s`` before exiting. There is no lifetime cap: restarts are counted and reported instead.
- `<data_dir>/stack.json` (pids, restarts, addresses, ready flag) is rewritten on every restart, so
  `rxtrail status` and `rxtrail down` see the current pids; ``rxtrail_stage_health`` in the database
  (``services.adapters.stage_health``) gets each start and each exit (the last error), which ``/health`` and
  `rxtrail status` report with each stage's lag.
- Children die with the supervisor, even when it is SIGKILLed: each service child has the parent-death signal
  (``services.infra.reaper.die_with_parent``); the embedded PostgreSQL and Tansu are stopped by the reaper.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from events import topics
from services.infra.embedded import EmbeddedPostgres, Tansu
from services.infra.errors import InfraError
from services.infra.kafka_admin import ensure_topics, wait_for_kafka
from services.infra.ports import log_tail, require_free_port, wait_for_port
from services.infra.reaper import die_with_parent
from services.infra.runtime import on_stop_signals
from services.infra.settings import Settings

log = logging.getLogger(__name__)

CORE_TOPICS = topics.CORE_TOPICS


def service_commands(settings: Settings) -> dict[str, list[str]]:
    """Every long-running service, as the command line that runs it (``rxtrail run <service>``) with the stack's
    environment; the keys name the children (and their logs)."""
    from projections import registry
    from services.bootstrap import has_expiry

    run = [sys.executable, "-m", "services.cli", "run"]
    commands = {
        "api": [*run, "api"],
        "relay": [*run, "relay"],
        "settlement": [*run, "settlement"],
        "router": [*run, "router"],
        "gateway": [*run, "gateway"],
        **{f"projection:{name}": [*run, "projection", name] for name in registry.NAMES},
        "intake": [*run, "intake"],
        "checkpoint": [*run, "checkpoint"],
    }
    if has_expiry():
        commands["expiry"] = [*run, "expiry"]
    return commands


def prepare_database(settings: Settings) -> None:
    """Create the shared tables once, before the services start: concurrent CREATE TABLE IF NOT EXISTS from
    several processes can still collide in PostgreSQL's catalog."""
    import asyncio

    import psycopg

    from services.adapters import api_keys as keys
    from services.adapters import stage_health
    from services.bootstrap import build_application
    from services.integrity import checkpoint
    from services.reference.seed import seed as seed_reference
    from services.relay import positions

    database_url = settings.resolved_database_url()
    app = build_application(settings)
    try:  # the reference data as registry events, once (services/reference/seed.py; later starts read one row)
        report = seed_reference(app)
    finally:
        app.close()
    if not report.ok:
        raise InfraError("the reference data could not be loaded as registry events: " + "; ".join(report.refused[:3]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        keys.ensure_schema(conn)
        checkpoint.ensure_tables(conn)
        stage_health.ensure_table(conn)
        stage_health.clear(conn)  # restarts and errors are counted per stack life

    async def relay_tables() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
            await positions.ensure_tables(aconn)

    asyncio.run(relay_tables())


@dataclass
class Child:
    name: str
    argv: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    """Restarts in this stack's life (reported; never a reason to give up)."""
    failures: int = 0
    """Exits since the child last ran healthy: the exponent of the next backoff."""
    started_at: float = 0.0
    restart_at: float | None = None
    """When a child that exited is started again (monotonic); None while it runs."""
    last_exit: str | None = None

    def start(self, env: dict[str, str]) -> None:
        with open(self.log_file, "ab") as logf:
            # SIGKILL when the supervisor dies (even by SIGKILL): no orphan keeps a port or a consumer group
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=die_with_parent(signal.SIGKILL))  # noqa: PLW1509
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def backoff_s(settings: Settings, failures: int) -> float:
    """Wait before restarting a child that exited ``failures`` times since it last ran healthy (0 = first)."""
    s = settings.supervisor
    return float(min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** min(failures, 30)))


_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*(?:[A-Z][a-z]\w*: \S.*|"
                         r"[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Timeout|Failed|Fault)\w*(?::.*)?)$")
"""The last line of a Python traceback (also as Rich prints it): ``pkg.SomeError: message``, ``AdminShutdown: ...``."""


def exit_reason(code: int | None, log_file: Path) -> str:
    """How a child ended: its exit code (or signal) and the last exception line of its log."""
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    lines = [line.rstrip() for line in log_tail(log_file, 60).splitlines() if line.strip()]
    error = next((line.strip() for line in reversed(lines) if _ERROR_LINE.match(line)), None)
    return f"{how}: {error[:500]}" if error else how


class HealthWriter:
    """Writes starts and exits to ``rxtrail_stage_health``; never fails the supervisor (PostgreSQL may be the
    part that is down): writes that fail are kept (the latest 200) and tried again with the next write or
    ``retry()``, in order."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: Any = None
        self._pending: list[Any] = []

    def _write(self, action: Any) -> None:
        self._pending = [*self._pending, action][-200:]
        self.retry()

    def retry(self) -> None:
        import psycopg

        while self._pending:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
                self._pending[0](self._conn)
            except psycopg.Error as exc:
                log.debug("stage health not recorded yet: %s", exc)
                self.close()
                return
            self._pending.pop(0)

    def started(self, name: str, pid: int | None, restarts: int) -> None:
        from services.adapters import stage_health

        if pid is not None:
            self._write(lambda conn: stage_health.record_start(conn, name, pid, restarts))

    def exited(self, name: str, reason: str) -> None:
        from services.adapters import stage_health

        self._write(lambda conn: stage_health.record_exit(conn, name, reason))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


@dataclass
class Stack:
    settings: Settings
    postgres: EmbeddedPostgres | None = None
    kafka: Tansu | None = None
    apache: Any = None
    """The Apache Kafka cluster (``services.infra.apache_kafka.ApacheKafka``) when ``kafka_launcher`` is apache."""
    children: dict[str, Child] = field(default_factory=dict)
    database_url: str = ""
    bootstrap: str = ""
    reaper: subprocess.Popen[bytes] | None = None
    health: HealthWriter | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir).absolute()

    @property
    def state_file(self) -> Path:
        return self.data_dir / "stack.json"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start_reaper(self) -> None:
        """The process that stops the embedded parts if the supervisor dies (see ``services.infra.reaper``)."""
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        flags = [*(["--postgres"] if s.embedded_postgres else []), *(["--kafka"] if s.embedded_kafka else [])]
        if not flags:
            return
        with open(self.data_dir / "reaper.log", "ab") as logf:
            self.reaper = subprocess.Popen([sys.executable, "-m", "services.infra.reaper", str(self.data_dir), *flags],
                                           stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           preexec_fn=die_with_parent(signal.SIGTERM))  # noqa: PLW1509

    def start_parts(self) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if s.embedded_postgres:
            self.postgres = EmbeddedPostgres(self.data_dir, s.postgres_port, timeout_s=s.start_timeout_s)
            self.database_url = self.postgres.start()
        else:
            self.database_url = str(s.database_url)
            _check_database(self.database_url)
        if s.embedded_kafka and s.kafka_launcher == "apache":
            self.bootstrap = self.start_apache()
        elif s.embedded_kafka:
            self.kafka = Tansu(self.data_dir, s.kafka_port, timeout_s=s.start_timeout_s)
            self.bootstrap = self.kafka.start()
        else:
            self.bootstrap = str(s.kafka_bootstrap)
            wait_for_kafka(self.bootstrap, s.start_timeout_s)
        ensure_topics(self.bootstrap, CORE_TOPICS, s.partitions)
        prepare_database(s.model_copy(update={"database_url": self.database_url}))

    def start_apache(self) -> str:
        """Apache Kafka 4.x brokers on loopback (``services.infra.apache_kafka``): the first on ``kafka_port``, the
        others on free ports; with 3 brokers the topics get replication 3 and the brokers min.insync.replicas 2.
        Their pids go to ``apache-kafka.pids`` for the reaper (the JVMs run in sessions of their own)."""
        from services.infra.apache_kafka import ApacheKafka
        from services.infra.ports import free_ports

        s = self.settings
        others = [p for p in free_ports(s.kafka_brokers) if p != s.kafka_port]  # n free, never kafka_port
        ports = [s.kafka_port, *others[: s.kafka_brokers - 1]]
        self.apache = ApacheKafka().start(brokers=s.kafka_brokers, base_dir=self.data_dir / "kafka", ports=ports,
                                          partitions=s.partitions, timeout_s=max(s.start_timeout_s, 90.0))
        self.write_broker_pids()
        return str(self.apache.bootstrap)

    def write_broker_pids(self) -> None:
        """``apache-kafka.pids`` (one pid a line), replaced atomically: the reaper and tests never read half."""
        path = self.data_dir / "apache-kafka.pids"
        tmp = path.with_name(f".apache-kafka.pids.{os.getpid()}")
        tmp.write_text("".join(f"{n.proc.pid}\n" for n in self.apache.nodes if n.proc is not None))
        os.replace(tmp, path)

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RXTRAIL_DATABASE_URL": self.database_url,
            "RXTRAIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "RXTRAIL_DATA_DIR": str(self.data_dir),
            # prepare_database() made eventsourcing's tables; services starting together must not race to
            "CREATE_TABLE": "false",
        })
        return env

    def start_services(self) -> None:
        require_free_port(self.settings.api_host, self.settings.api_port, "api")
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        env = self.child_env()
        self.health = HealthWriter(self.database_url)
        # The API first, on its own: a dozen interpreters importing at once on two cores kept it from listening
        # within the start timeout; the other stages start once it answers.
        commands = service_commands(self.settings)
        for name in sorted(commands, key=lambda n: n != "api"):
            child = Child(name, commands[name], logs / f"{name.replace(':', '-')}.log")
            child.start(env)
            self.children[name] = child
            self.health.started(name, child.pid, 0)
            if name == "api" and not wait_for_port(self.settings.api_host, self.settings.api_port,
                                                   self.settings.start_timeout_s):
                raise InfraError(f"api: not listening on {self.api_url}; log tail:\n{log_tail(child.log_file)}")
        for child in self.children.values():
            if not child.alive():
                raise InfraError(f"{child.name}: exited at start; log tail:\n{log_tail(child.log_file)}")

    def ready_line(self) -> str:
        return f"rxtrail ready: postgres={_redact(self.database_url)} kafka={self.bootstrap} api={self.api_url}"

    def write_state(self, ready: bool) -> None:
        """``stack.json``, replaced atomically (readers never see half a file); rewritten on every restart."""
        state = {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "postgres": _redact(self.database_url),
            "kafka": self.bootstrap,
            "api": self.api_url,
            "services": {n: (c.pid if c.alive() else None) for n, c in self.children.items()},
            "restarts": {n: c.restarts for n, c in self.children.items()},
            "last_exit": {n: c.last_exit for n, c in self.children.items() if c.last_exit},
            "embedded": {"postgres": self.postgres is not None,
                         "kafka": self.kafka is not None or self.apache is not None},
        }
        tmp = self.state_file.with_name(f".stack.json.{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def supervise(self) -> None:
        """Restart every child that exits, after its backoff, for as long as the stack runs (see the module doc)."""
        env = self.child_env()
        parts_retry_at = 0.0
        while not self._stop.wait(self.settings.supervisor.poll_s):
            self.check_children(env)
            if time.monotonic() < parts_retry_at:
                continue
            try:
                self.check_parts()
            except Exception as exc:  # a part that cannot start now is tried again; the supervisor stays
                log.error("restarting an embedded part failed (%s); trying again in %.0fs", exc,
                          self.settings.supervisor.backoff_max_s)
                parts_retry_at = time.monotonic() + self.settings.supervisor.backoff_max_s

    def check_parts(self) -> None:
        """Restart the embedded PostgreSQL or Tansu when it died (the services reconnect on their own)."""
        if self.postgres is not None and self.postgres.running_pid() is None:
            log.error("postgres died; its log tail:\n%s", log_tail(self.postgres.log_file))
            self.postgres.start()
            log.warning("postgres restarted")
        if self.kafka is not None and self.kafka.running_pid() is None:
            log.error("kafka (tansu) died; its log tail:\n%s", log_tail(self.kafka.log_file))
            self.kafka.proc = None
            self.bootstrap = self.kafka.start()
            ensure_topics(self.bootstrap, CORE_TOPICS, self.settings.partitions)
            log.warning("kafka (tansu) restarted empty; the relay republishes from the event store")
        for i, node in enumerate(self.apache.nodes if self.apache is not None else []):
            if not node.alive():  # its data is on disk: it rejoins the cluster and catches up from the others
                log.error("kafka broker %d (apache) died; restarting it", node.node_id)
                self.apache.restart_broker(i)
                self.write_broker_pids()

    def check_children(self, env: dict[str, str]) -> None:
        """One round: note children that exited (and schedule their restart), start those whose backoff is over."""
        now = time.monotonic()
        changed = False
        for child in self.children.values():
            if child.alive() or child.proc is None:
                continue
            if child.restart_at is None:  # exited since the last round
                ran = now - child.started_at
                if ran >= self.settings.supervisor.healthy_after_s:
                    child.failures = 0
                delay = backoff_s(self.settings, child.failures)
                child.failures += 1
                child.last_exit = exit_reason(child.proc.returncode, child.log_file)
                child.restart_at = now + delay
                log.warning("%s (pid %s) %s after %.1fs; restart #%d in %.1fs (log: %s)", child.name,
                            child.proc.pid, child.last_exit, ran, child.restarts + 1, delay, child.log_file)
                if self.health is not None:
                    self.health.exited(child.name, child.last_exit)
                changed = True
            elif now >= child.restart_at:
                child.restarts += 1
                child.start(env)
                log.info("%s restarted as pid %s (restart #%d)", child.name, child.pid, child.restarts)
                if self.health is not None:
                    self.health.started(child.name, child.pid, child.restarts)
                changed = True
        if changed:
            self.write_state(ready=True)
        elif self.health is not None:
            self.health.retry()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self.reaper is not None:  # this is an orderly stop: the parts are stopped below
            self.reaper.kill()
            self.reaper.wait(5)
        children = list(reversed(list(self.children.values())))
        for child in children:  # all at once, then wait for each
            child.terminate()
        for child in children:
            child.stop()
        if self.health is not None:
            self.health.close()
        if self.kafka is not None:
            self.kafka.stop()
        if self.apache is not None:
            self.apache.stop()
            (self.data_dir / "apache-kafka.pids").unlink(missing_ok=True)
        if self.postgres is not None:
            self.postgres.stop()
        self.state_file.unlink(missing_ok=True)


def _check_database(url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        raise InfraError(f"postgres: cannot connect to RXTRAIL_DATABASE_URL ({_redact(url)}): {exc}") from exc


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.password:
        return url.replace(f":{u.password}@", ":***@")
    return url


def run_foreground(settings: Settings, on_ready: Any = print) -> int:
    stack = Stack(settings)
    if read_state(settings):
        raise InfraError(f"a stack is already running from {stack.data_dir}; `rxtrail status` or `rxtrail down`")
    on_stop_signals(stack.request_stop)
    try:
        stack.start_reaper()
        stack.start_parts()
        stack.start_services()
        stack.write_state(ready=True)
        on_ready(stack.ready_line())
        stack.supervise()
        return 0
    finally:
        stack.stop()


def read_state(settings: Settings) -> dict[str, Any] | None:
    path = Path(settings.data_dir).absolute() / "stack.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(int(state.get("supervisor_pid", 0))):
        return None
    return state


def start_detached(settings: Settings, timeout_s: float) -> dict[str, Any]:
    data_dir = Path(settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    if read_state(settings):
        raise InfraError(f"a stack is already running from {data_dir}; `rxtrail status` or `rxtrail down`")
    (data_dir / "stack.json").unlink(missing_ok=True)
    logf = open(data_dir / "up.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    logf.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(settings)
        if state and state.get("ready"):
            return state
        if proc.poll() is not None:
            raise InfraError(f"rxtrail up exited with code {proc.returncode}; log tail:\n"
                             f"{log_tail(data_dir / 'up.log')}")
        time.sleep(0.2)
    raise InfraError(f"rxtrail up was not ready within {timeout_s:.0f}s; log: {data_dir / 'up.log'}")


def stop_detached(settings: Settings, timeout_s: float = 30.0) -> bool:
    state = read_state(settings)
    if not state:
        return False
    proc = psutil.Process(int(state["supervisor_pid"]))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except psutil.TimeoutExpired:
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()
    return True
