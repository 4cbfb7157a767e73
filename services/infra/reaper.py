"""Children die with the supervisor: the parent-death signal, and a reaper for the embedded parts.

Every service child of ``rxtrail up`` is started with ``PR_SET_PDEATHSIG`` (Linux ``prctl``, set in the child
between fork and exec by ``die_with_parent``): when the supervisor dies, even by SIGKILL, the kernel kills the
child. The embedded PostgreSQL (started by ``pg_ctl``, which daemonizes the postmaster) and Tansu (its own session,
restarted by the supervisor when it dies) cannot carry that signal, so the supervisor also starts this small
reaper (``python -m services.infra.reaper <data_dir> [--postgres] [--kafka]``) with the parent-death signal
SIGTERM: when the supervisor dies, the reaper stops the parts it names — PostgreSQL with a fast shutdown (SIGINT
to the postmaster), Tansu with SIGKILL (it keeps nothing on disk) — and exits. On a normal stop the supervisor
kills the reaper first and stops the parts itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_parent_death_signal(sig: int, libc: Any = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    return int((libc or _libc()).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when the process that started it dies
    (also when it died between the fork and this call); None off Linux. libc is loaded here, in the parent: the
    hook in the child only calls ``prctl``, ``getppid`` and ``kill`` (nothing that takes a lock; the supervisor
    starts children from its main thread and runs no other threads). PR_SET_PDEATHSIG follows the *thread* that
    forked: start children from the thread that lives as long as the supervisor."""
    if not sys.platform.startswith("linux"):
        return None
    libc = _libc()
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return preexec


def _process_named(pid: int, word: str) -> bool:
    try:
        import psutil

        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and word in " ".join([p.name(), *p.cmdline()])
    except Exception:
        return False


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        return []


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().splitlines()[0].strip())
    except (OSError, ValueError, IndexError):
        return None


def reap(data_dir: Path, *, postgres: bool, kafka: bool, wait_s: float = 15.0) -> None:
    """Stop the embedded parts of the stack in ``data_dir`` (see the module doc)."""
    if kafka and (pid := _pid_from(data_dir / "tansu.pid")) and _process_named(pid, "tansu"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if kafka:  # Apache Kafka brokers (`kafka_launcher=apache`): each JVM leads a process group of its own
        for line in _lines(data_dir / "apache-kafka.pids"):
            if line.isdigit() and _process_named(int(line), "kafka.Kafka"):
                try:
                    os.killpg(int(line), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    if postgres and (pid := _pid_from(data_dir / "postgres" / "postmaster.pid")) and _process_named(pid, "postgres"):
        try:
            os.kill(pid, signal.SIGINT)  # fast shutdown: sessions are cut, data is safe
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _process_named(pid, "postgres"):
            time.sleep(0.1)
        if _process_named(pid, "postgres"):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown


def main(argv: list[str]) -> int:
    data_dir = Path(argv[0])
    postgres, kafka = "--postgres" in argv, "--kafka" in argv
    fired = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal fired
        fired = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops things in order
    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    while not fired and os.getppid() == parent:
        time.sleep(0.5)  # also notices a parent gone without the signal (its pid changes)
    reap(data_dir, postgres=postgres, kafka=kafka)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
