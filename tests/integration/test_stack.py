"""`rxtrail up` on embedded parts: ready line, clean Ctrl-C, clear errors for a taken port and a dying broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.infra.ports import free_ports
from tests.support import wait_until


@pytest.fixture
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = Path("/var/tmp") / f"rxtrail-stack-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ)
    env.update({"RXTRAIL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"})
    _choose_ports(env)
    env.pop("RXTRAIL_DATABASE_URL", None)
    env.pop("RXTRAIL_KAFKA_BOOTSTRAP", None)
    yield env
    subprocess.run([sys.executable, "-m", "services.cli", "down"], env=env, capture_output=True, timeout=60)
    import shutil

    shutil.rmtree(data, ignore_errors=True)


def _choose_ports(env: dict[str, str]) -> None:
    postgres, kafka, api = free_ports(3)  # three distinct ports
    env.update({"RXTRAIL_POSTGRES_PORT": str(postgres), "RXTRAIL_KAFKA_PORT": str(kafka), "RXTRAIL_API_PORT": str(api)})


def _up_ready(env: dict[str, str], attempts: int = 5) -> tuple[subprocess.Popen[str], str]:
    """`rxtrail up` until its ready line; on other ports again if one was taken before the stack bound it."""
    for attempt in range(1, attempts + 1):
        proc = _up(env)
        try:
            return proc, _wait_ready(proc)
        except AssertionError as exc:
            if attempt == attempts or "is already taken" not in " ".join(str(exc).split()):
                raise
            _choose_ports(env)
    raise AssertionError("unreachable")


def _up(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float = 60) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("rxtrail ready:"):
            return line.strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"rxtrail up exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError("no ready line")


def _state(env: dict[str, str]) -> dict[str, object]:
    return json.loads((Path(env["RXTRAIL_DATA_DIR"]) / "stack.json").read_text())  # type: ignore[no-any-return]


def test_up_prints_ready_line_and_ctrl_c_leaves_no_process(stack_env: dict[str, str]) -> None:
    proc, line = _up_ready(stack_env)
    assert f"kafka=127.0.0.1:{stack_env['RXTRAIL_KAFKA_PORT']}" in line
    assert f":{stack_env['RXTRAIL_POSTGRES_PORT']}/rxtrail" in line
    import httpx

    health = httpx.get(f"http://127.0.0.1:{stack_env['RXTRAIL_API_PORT']}/health", timeout=5).json()
    assert health["status"] == "ok" and health["database"] is True
    assert {"relay", "api", "projection:traceability"} <= set(health["stages"])  # each stage's pid, lag, last error
    state = _state(stack_env)
    pids = [p for p in state["services"].values()]  # type: ignore[attr-defined]
    data = Path(stack_env["RXTRAIL_DATA_DIR"])
    tansu_pid = int((data / "tansu.pid").read_text())
    pg_pid = int((data / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0

    def alive() -> list[int]:
        return [pid for pid in [*pids, tansu_pid, pg_pid]
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    wait_until(lambda: not alive(), timeout=10, ignore=(psutil.NoSuchProcess,),
               what=lambda: f"every process of the stack to exit (alive: {alive()})")


def test_detached_up_status_down(stack_env: dict[str, str]) -> None:
    cli = [sys.executable, "-m", "services.cli"]
    for _attempt in range(5):
        r = subprocess.run([*cli, "up", "--detach"], env=stack_env, capture_output=True, text=True, timeout=90)
        if r.returncode == 0 or "is already taken" not in " ".join(r.stderr.split()):
            break
        _choose_ports(stack_env)  # a port was taken before the stack bound it
    assert r.returncode == 0, r.stderr
    assert "rxtrail ready:" in r.stdout
    s = subprocess.run([*cli, "status"], env=stack_env, capture_output=True, text=True, timeout=30)
    assert s.returncode == 0 and "api" in s.stdout and "running" in s.stdout
    again = subprocess.run([*cli, "up"], env=stack_env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "already running" in again.stderr.replace("\n", "")
    d = subprocess.run([*cli, "down"], env=stack_env, capture_output=True, text=True, timeout=60)
    assert d.returncode == 0 and "stopped" in d.stdout
    s2 = subprocess.run([*cli, "status"], env=stack_env, capture_output=True, text=True, timeout=30)
    assert s2.returncode == 1 and "not running" in s2.stdout


def test_taken_kafka_port_is_named(stack_env: dict[str, str]) -> None:
    port = int(stack_env["RXTRAIL_KAFKA_PORT"])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        r = subprocess.run([sys.executable, "-m", "services.cli", "up"], env=stack_env, capture_output=True,
                           text=True, timeout=90)
    message = " ".join(r.stderr.split())
    assert r.returncode == 2
    assert f"port 127.0.0.1:{port} is already taken" in message and "kafka" in message


def test_dying_broker_is_reported_and_restarted(stack_env: dict[str, str]) -> None:
    proc, _ = _up_ready(stack_env)
    data = Path(stack_env["RXTRAIL_DATA_DIR"])
    first = int((data / "tansu.pid").read_text())
    os.kill(first, signal.SIGKILL)

    def restarted() -> int | None:
        pid = int((data / "tansu.pid").read_text())
        return pid if pid != first else None

    try:
        second = wait_until(restarted, timeout=30, interval=0.3, ignore=(OSError, ValueError),
                            what="the supervisor to restart the broker")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    stderr = " ".join((proc.stderr.read() if proc.stderr else "").split())
    assert second != first
    assert "kafka (tansu) died" in stderr and "restarted empty" in stderr
