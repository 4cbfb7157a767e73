"""`rxtrail up` as an operator leaves it running: its supervisor (not the harness) restarts a service however often
it dies, `stack.json` / `rxtrail status` follow the current PIDs, `rxtrail replay --from-store` during traffic
works every time (coordinated through the database, not a PID recorded at start), nothing is lost, and the
children die with the supervisor (SIGKILL of `rxtrail up` leaves no service running)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from services.infra.ports import free_ports
from tests.faults.harness import Traffic, check_end_state, register_cast, say

pytestmark = pytest.mark.faults


class UpStack:
    """A stack started with `rxtrail up --detach` in its own data dir on free ports (what the harness needs of a
    stack: addresses, settings, the CLI; kills are counted here, restarts are the supervisor's)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        pg, kafka, api = free_ports(3)
        self._env = dict(os.environ)
        self._env.update({"RXTRAIL_DATA_DIR": str(base), "RXTRAIL_POSTGRES_PORT": str(pg),
                          "RXTRAIL_KAFKA_PORT": str(kafka), "RXTRAIL_API_PORT": str(api),
                          "RXTRAIL_PARTITIONS": "3", "RXTRAIL_CHECKPOINT_INTERVAL_S": "5"})
        for k in ("RXTRAIL_DATABASE_URL", "RXTRAIL_KAFKA_BOOTSTRAP"):
            self._env.pop(k, None)
        self.api_port, self.pg_port, self.kafka_port = api, pg, kafka
        self.kills: Counter[str] = Counter()
        self.database_url = self.bootstrap = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        return dict(self._env)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env=self._env, capture_output=True,
                              text=True, timeout=timeout)

    def up(self) -> None:
        r = self.cli("up", "--detach", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        state = self.state()
        self.database_url, self.bootstrap = state["postgres"], state["kafka"]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.base / "stack.json").read_text()))

    def settings(self) -> Any:
        from services.infra.settings import Settings

        return Settings(database_url=self.database_url, kafka_bootstrap=self.bootstrap, data_dir=self.base,
                        api_port=self.api_port)

    def crashes(self) -> dict[str, int]:
        return {}

    def supervisor(self) -> psutil.Process:
        return psutil.Process(int(self.state()["supervisor_pid"]))

    def child(self, name: str) -> psutil.Process | None:
        """The live process of service ``name`` (found among the supervisor's children by its command line)."""
        wanted = ["run", "projection"] if name == "projections" else ["run", *name.split(":")]
        with contextlib.suppress(psutil.Error):
            for p in self.supervisor().children():
                cmd = p.cmdline()
                # a child between fork and exec still shows the supervisor's own command line (no "run")
                if "services.cli" in cmd and "run" in cmd and \
                        cmd[cmd.index("run"):cmd.index("run") + len(wanted)] == wanted:
                    return p
        return None

    def cleanup(self) -> None:
        """Whatever is left: `rxtrail down`, then the children and embedded parts by their pids."""
        with contextlib.suppress(Exception):
            self.cli("down", timeout=60)
        from services.infra.embedded import EmbeddedPostgres, Tansu

        with contextlib.suppress(Exception):
            Tansu(self.base, self.kafka_port).stop()
        with contextlib.suppress(Exception):
            EmbeddedPostgres(self.base, self.pg_port).stop()


@pytest.fixture
def up_stack() -> Any:
    base = Path(tempfile.mkdtemp(prefix="rxtrail-faults-up-", dir="/var/tmp"))
    stack = UpStack(base)
    children: list[int] = []
    try:
        yield stack, children
    finally:
        for pid in children:  # children the test saw: by pid, never by name
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        stack.cleanup()
        if not os.environ.get("RXTRAIL_FAULTS_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def test_rxtrail_up_can_be_left_running(up_stack: Any) -> None:
    stack, children = up_stack
    stack.up()
    say(f"rxtrail up --detach: {stack.database_url} {stack.bootstrap} {stack.api_url}")
    seen: dict[str, Any] = {}
    traffic = Traffic(stack, register_cast(stack), clients=2, max_journeys=400, max_seconds=60,  # type: ignore[arg-type]
                      route_wait_s=40).start()
    time.sleep(5)

    # 6 SIGKILLs of one projection process (one more than the old lifetime cap), each after it came back
    target = "projection:hospital_settlement" if "projection:hospital_settlement" in stack.state()["services"] \
        else "projections"  # one process per projection, or (before) one for all
    restarted = 0
    for _ in range(6):
        p = stack.child(target)
        if p is None:
            break
        children.append(p.pid)
        p.kill()
        stack.kills["projections"] += 1
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            q = stack.child(target)
            if q is not None and q.pid != p.pid:
                restarted += 1
                break
            time.sleep(0.5)
        time.sleep(2)
    seen["projections restarted after kill"] = f"{restarted}/{stack.kills['projections']}"
    say(f"projections killed {stack.kills['projections']}x, restarted {restarted}x")

    # stack.json / status follow the current pids
    live = {name: (c.pid if (c := stack.child(name)) else None) for name in stack.state()["services"]}
    children.extend(pid for pid in live.values() if pid)
    recorded = stack.state()["services"]
    seen["stack.json == live pids"] = recorded == live
    status = stack.cli("status")
    seen["status DOWN lines"] = [ln.strip() for ln in status.stdout.splitlines() if "DOWN" in ln]

    # replay during traffic, twice
    for i in (1, 2):
        r = stack.cli("replay", "all", "--from-store")
        seen[f"replay {i} exit"] = r.returncode
        if r.returncode != 0:
            seen[f"replay {i} tail"] = (r.stdout + r.stderr)[-300:]
    stats = traffic.join(120)
    say(stats.line())
    state = check_end_state(stack, settle_timeout=60, extra={"journeys": stats.journeys_started})  # type: ignore[arg-type]

    # SIGKILL of `rxtrail up`: its children must not outlive it
    live_children = [p.pid for p in stack.supervisor().children()]
    children.extend(live_children)
    stack.supervisor().kill()
    time.sleep(5)
    left = [pid for pid in live_children if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    seen["children left after SIGKILL of rxtrail up"] = len(left)
    say(f"supervisor observations: {seen}")

    assert restarted == stack.kills["projections"] == 6, seen
    assert seen["stack.json == live pids"], (recorded, live)
    assert not seen["status DOWN lines"], seen
    assert seen["replay 1 exit"] == 0 and seen["replay 2 exit"] == 0, seen
    assert state.ok, state.report()
    assert not left, seen
