"""`rxtrail up`: the embedded parts plus every service, supervised as one process group.

The supervisor owns the parts it started. It writes `<data_dir>/stack.json` (pids, addresses, ready flag)
so `rxtrail status` and `rxtrail down` can find a detached stack.
"""

from __future__ import annotations

import json
import logging
import os
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
from services.infra.runtime import on_stop_signals
from services.infra.settings import Settings

log = logging.getLogger(__name__)

CORE_TOPICS = topics.CORE_TOPICS


def service_commands(settings: Settings) -> dict[str, list[str]]:
    """Every long-running service, as the command line that runs it (``rxtrail run <service>``) with the stack's
    environment; the keys name the children (and their logs)."""
    from services.bootstrap import has_expiry

    run = [sys.executable, "-m", "services.cli", "run"]
    commands = {
        "api": [*run, "api"],
        "relay": [*run, "relay"],
        "settlement": [*run, "settlement"],
        "router": [*run, "router"],
        "gateway": [*run, "gateway"],
        "projections": [*run, "projection", "all"],
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
    from services.bootstrap import build_application
    from services.integrity import checkpoint
    from services.relay import positions

    database_url = settings.resolved_database_url()
    build_application(settings).close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        keys.ensure_schema(conn)
        checkpoint.ensure_tables(conn)

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
    started_at: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        logf = open(self.log_file, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        logf.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Stack:
    settings: Settings
    postgres: EmbeddedPostgres | None = None
    kafka: Tansu | None = None
    children: dict[str, Child] = field(default_factory=dict)
    database_url: str = ""
    bootstrap: str = ""
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

    def start_parts(self) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if s.embedded_postgres:
            self.postgres = EmbeddedPostgres(self.data_dir, s.postgres_port, timeout_s=s.start_timeout_s)
            self.database_url = self.postgres.start()
        else:
            self.database_url = str(s.database_url)
            _check_database(self.database_url)
        if s.embedded_kafka:
            self.kafka = Tansu(self.data_dir, s.kafka_port, timeout_s=s.start_timeout_s)
            self.bootstrap = self.kafka.start()
        else:
            self.bootstrap = str(s.kafka_bootstrap)
            wait_for_kafka(self.bootstrap, s.start_timeout_s)
        ensure_topics(self.bootstrap, CORE_TOPICS, s.partitions)
        prepare_database(s.model_copy(update={"database_url": self.database_url}))

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
        for name, argv in service_commands(self.settings).items():
            child = Child(name, argv, logs / f"{name}.log")
            child.start(env)
            self.children[name] = child
        if not wait_for_port(self.settings.api_host, self.settings.api_port, self.settings.start_timeout_s):
            api = self.children["api"]
            raise InfraError(f"api: not listening on {self.api_url}; log tail:\n{log_tail(api.log_file)}")
        for child in self.children.values():
            if not child.alive():
                raise InfraError(f"{child.name}: exited at start; log tail:\n{log_tail(child.log_file)}")

    def ready_line(self) -> str:
        return f"rxtrail ready: postgres={_redact(self.database_url)} kafka={self.bootstrap} api={self.api_url}"

    def write_state(self, ready: bool) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "postgres": _redact(self.database_url),
            "kafka": self.bootstrap,
            "api": self.api_url,
            "services": {n: (c.proc.pid if c.proc else None) for n, c in self.children.items()},
            "embedded": {"postgres": self.postgres is not None, "kafka": self.kafka is not None},
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    def supervise(self, poll_s: float = 0.5, max_restarts: int = 5) -> None:
        """Restart a crashed service with backoff; give up on it (loudly) after max_restarts."""
        env = self.child_env()
        while not self._stop.wait(poll_s):
            for child in self.children.values():
                if child.alive() or child.proc is None:
                    continue
                code = child.proc.returncode
                if child.restarts >= max_restarts:
                    log.error("%s exited (code %s) %d times; not restarting. Log: %s",
                              child.name, code, child.restarts, child.log_file)
                    child.proc = None
                    continue
                backoff = min(30.0, 2.0 ** child.restarts)
                log.warning("%s exited with code %s; restarting in %.0fs", child.name, code, backoff)
                if self._stop.wait(backoff):
                    return
                child.restarts += 1
                child.start(env)
            if self.kafka is not None and self.kafka.running_pid() is None:
                log.error("kafka (tansu) died; its log tail:\n%s", log_tail(self.kafka.log_file))
                self.kafka.proc = None
                self.bootstrap = self.kafka.start()
                ensure_topics(self.bootstrap, CORE_TOPICS, self.settings.partitions)
                log.warning("kafka (tansu) restarted empty; the relay republishes from the event store")

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for child in reversed(list(self.children.values())):
            child.stop()
        if self.kafka is not None:
            self.kafka.stop()
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
