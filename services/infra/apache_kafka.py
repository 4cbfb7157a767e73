"""Apache Kafka 4.x (KRaft) on loopback, run from Maven Central jars with the machine's Java.

`python -m services.infra.apache_kafka [--brokers 3]` starts a cluster and keeps it up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from services.infra.errors import InfraError
from services.infra.ports import PortTaken, free_ports, port_is_free
from services.infra.runtime import on_stop_signals

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
TOOLS_POM = DEPLOY_DIR / "tools" / "pom.xml"
"""Kafka's command-line tools (``kafka-tools``), fetched apart from the broker's jars (see ``ensure_tool_jars``)."""
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
"""The main class of ``kafka-console-consumer.sh`` (Kafka 4.x; ``kafka.tools.ConsoleConsumer`` is gone)."""
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
JAVA_MISSING = "Java not found: install a JDK 17+ or use the embedded Tansu broker"
MVN_MISSING = "Maven (mvn) not found: install Maven 3.8+ to fetch the Apache Kafka jars, or use the embedded Tansu broker"
STOP_GRACE_S = 10.0
# C1-only and the serial GC start a 3-node cluster on 2 cores in ~7 s instead of ~11 s; benchmarks override
DEFAULT_JVM_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RXTRAIL_KAFKA_CACHE") or Path.home() / ".cache" / "rxtrail" / "kafka")


def find_java() -> str:
    """Looked up at call time (not import time) so a changed PATH/JAVA_HOME is honoured."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise InfraError(JAVA_MISSING)
    return java


def check_java_version(java: str) -> None:
    try:
        out = subprocess.run(
            [java, "-version"], check=False, capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"{JAVA_MISSING} ({java} does not run: {exc})") from exc
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if m is None:
        return
    major = int(m.group(2) or 0) if m.group(1) == "1" else int(m.group(1))
    if major < 17:
        raise InfraError(
            f"Java {major} found at {java}; Apache Kafka 4.x needs a JDK 17+ (or use the embedded Tansu broker)"
        )


def ensure_jars(cache_dir: Path | None = None, *, pom: Path = POM, name: str = "jars",
                main_jar: str = "kafka_2.13-*.jar") -> Path:
    """Fetch the broker's runtime classpath once per pom version; returns the directory of jars."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    find_java()
    if not pom.is_file():
        raise InfraError(f"Apache Kafka pom not found at {pom}: run from a checkout of rxtrail")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    jar_dir, marker = cache_dir / name, cache_dir / f"{name}.complete"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        # several test sessions may share the cache; one fetches, the others wait and reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read(marker) == digest and any(jar_dir.glob(main_jar)):
            return jar_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError(MVN_MISSING)
        staging = cache_dir / f"{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        try:
            res = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError("mvn did not fetch the Apache Kafka jars within 900 s") from exc
        if res.returncode != 0 or not any(staging.glob(main_jar)):
            shutil.rmtree(staging, ignore_errors=True)
            tail = _tail_text(res.stdout + res.stderr, 30)
            raise InfraError(f"mvn failed fetching the Apache Kafka jars (exit {res.returncode}):\n{tail}")
        marker.unlink(missing_ok=True)
        shutil.rmtree(jar_dir, ignore_errors=True)
        staging.rename(jar_dir)
        marker.write_text(digest)
        return jar_dir


def ensure_tool_jars(cache_dir: Path | None = None) -> Path:
    """Kafka's command-line tools (console consumer, topics, ...): their own pom and cache directory, so fetching
    them never replaces the broker's jars under running brokers. Use with ``tools_classpath``."""
    return ensure_jars(cache_dir, pom=TOOLS_POM, name="tool-jars", main_jar="kafka-tools-*.jar")


def tools_classpath(cache_dir: Path | None = None) -> str:
    """``java -cp`` for Kafka's tools: the tools' jars, then the broker's (``java -cp CP <main class> ...``)."""
    return f"{ensure_tool_jars(cache_dir) / '*'}{os.pathsep}{ensure_jars(cache_dir) / '*'}"


def new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # a leading dash reads as an option on the StorageTool command line
            return cid


def metadata_broker_ids(host: str, port: int, timeout_s: float = 2.0) -> list[int]:
    """Metadata v4 for no topics over a plain socket; returns the ids of the brokers the cluster reports."""
    client_id = b"rxtrail-launcher"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        buf = _recv_exact(s, size)
    off = 4 + 4  # correlation id, throttle time
    (n,) = struct.unpack_from(">i", buf, off)
    off += 4
    ids = []
    for _ in range(n):
        (node_id,) = struct.unpack_from(">i", buf, off)
        (hlen,) = struct.unpack_from(">h", buf, off + 4)
        off += 4 + 2 + hlen + 4
        (rlen,) = struct.unpack_from(">h", buf, off)
        off += 2 + max(rlen, 0)
        ids.append(node_id)
    return ids


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def console_log(self) -> Path:
        return self.dir / "logs" / "console.log"

    @property
    def server_log(self) -> Path:
        return self.dir / "logs" / "server.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ApacheKafka:
    """One to a few combined broker+controller JVMs on loopback; each JVM in its own process group."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.nodes: list[_Node] = []
        self.startup_s = 0.0
        self._java = ""
        self._jvm_args: list[str] = []
        self._owned_base: Path | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(
        self,
        brokers: int = 1,
        base_dir: Path | None = None,
        cache_dir: Path | None = None,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        heap: str = "384m",
        timeout_s: float = 90,
        partitions: int = 12,
        config: Mapping[str, str] | None = None,
    ) -> ApacheKafka:
        if self.nodes:
            raise InfraError("Apache Kafka: this launcher is already running; stop() it first")
        if brokers < 1:
            raise InfraError(f"Apache Kafka: brokers must be at least 1, got {brokers}")
        if ports is not None and len(ports) != brokers:
            raise InfraError(f"Apache Kafka: {brokers} broker(s) need {brokers} port(s), got {ports}")
        t0 = time.monotonic()
        self._java = find_java()
        check_java_version(self._java)
        for p in ports or []:
            if not port_is_free(host, p):
                raise PortTaken(host, p, "Apache Kafka")
        jar_dir = ensure_jars(cache_dir)
        self.host = host
        if base_dir is None:
            base_dir = self._owned_base = Path(tempfile.mkdtemp(prefix="rxtrail-kafka-"))
        base_dir = Path(base_dir)
        client_ports = list(ports) if ports is not None else []
        auto = free_ports(brokers - len(client_ports) + brokers, host)
        client_ports += auto[: brokers - len(client_ports)]
        controller_ports = auto[len(auto) - brokers :]
        self.nodes = [
            _Node(i + 1, client_ports[i], controller_ports[i], base_dir / f"node-{i + 1}")
            for i in range(brokers)
        ]
        self._jvm_args = [
            f"-Xmx{heap}", *os.environ.get("RXTRAIL_KAFKA_JVM_OPTS", DEFAULT_JVM_OPTS).split(),
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp", str(jar_dir / "*"),
        ]  # fmt: skip
        atexit.register(self.stop)
        try:
            self._write_configs(partitions, dict(config or {}))
            self._format(new_cluster_id())
            for n in self.nodes:
                self._spawn(n)
            self._wait_ready(self.nodes, timeout_s - (time.monotonic() - t0))
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _write_configs(self, partitions: int, extra: dict[str, str]) -> None:
        n = len(self.nodes)
        isr = 1 if n < 3 else 2
        voters = ",".join(f"{x.node_id}@{self.host}:{x.controller_port}" for x in self.nodes)
        for node in self.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)
            (node.dir / "logs").mkdir(parents=True)
            props = {
                "process.roles": "broker,controller",
                "node.id": str(node.node_id),
                "listeners": f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://{self.host}:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "log.dirs": str(node.dir / "data"),
                "num.partitions": str(partitions),
                "auto.create.topics.enable": "true",
                "default.replication.factor": str(min(n, 3)),
                "min.insync.replicas": str(isr),
                "offsets.topic.replication.factor": str(min(n, 3)),
                "offsets.topic.num.partitions": "12",
                "transaction.state.log.replication.factor": str(min(n, 3)),
                "transaction.state.log.min.isr": str(isr),
                "transaction.state.log.num.partitions": "12",
                "share.coordinator.state.topic.replication.factor": str(min(n, 3)),
                "share.coordinator.state.topic.min.isr": str(isr),
                "group.initial.rebalance.delay.ms": "0",
                "num.network.threads": "2",
                "num.io.threads": "4",
            }
            if n == 1:
                props["controller.quorum.bootstrap.servers"] = f"{self.host}:{node.controller_port}"
            else:
                props["controller.quorum.voters"] = voters
            props.update(extra)
            node.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _format(self, cluster_id: str) -> None:
        def fmt(node: _Node) -> None:
            cmd = [self._java, *self._jvm_args_for(node), "kafka.tools.StorageTool", "format",
                   "-t", cluster_id, "-c", str(node.config)]  # fmt: skip
            if len(self.nodes) == 1:
                cmd.append("--standalone")
            res = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
            )
            if res.returncode != 0:
                raise InfraError(
                    f"Apache Kafka: formatting storage for node {node.node_id} failed (exit {res.returncode}):\n"
                    + _tail_text(res.stdout + res.stderr + "\n" + _tail(node.server_log), 30)
                )

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for f in [pool.submit(fmt, n) for n in self.nodes]:
                f.result()

    def _jvm_args_for(self, node: _Node) -> list[str]:
        return [f"-Dkafka.logs.dir={node.dir / 'logs'}", *self._jvm_args]

    def _spawn(self, node: _Node) -> None:
        for port in (node.port, node.controller_port):
            if not port_is_free(self.host, port):
                raise PortTaken(self.host, port, f"Apache Kafka (node {node.node_id})")
        with open(node.console_log, "ab") as out:
            node.proc = subprocess.Popen(
                [self._java, *self._jvm_args_for(node), "kafka.Kafka", str(node.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=node.dir, start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self, waiting: list[_Node], timeout_s: float) -> None:
        deadline = time.monotonic() + max(timeout_s, 1.0)
        expected = {n.node_id for n in self.nodes if n.alive()}
        pending = list(waiting)
        while pending:
            for node in pending:
                if node.proc is not None and node.proc.poll() is not None:
                    raise InfraError(
                        f"Apache Kafka node {node.node_id} (port {node.port}) exited with code "
                        f"{node.proc.returncode} during startup; last log lines:\n{self._node_tail(node)}"
                    )
            try:
                ids = metadata_broker_ids(self.host, pending[0].port)
            except (OSError, struct.error):
                ids = []
            if expected <= set(ids):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                node = pending[0]
                raise InfraError(
                    f"Apache Kafka node {node.node_id} (port {node.port}) was not ready within {timeout_s:.0f} s "
                    f"(brokers registered: {sorted(ids)} of {sorted(expected)}); last log lines:\n"
                    f"{self._node_tail(node)}"
                )
            time.sleep(0.2)

    def _node_tail(self, node: _Node) -> str:
        """The first error and its causes, then the tail: a stack trace alone pushes the cause out of view."""
        try:
            lines = node.server_log.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        first = next((ln for ln in lines if " ERROR " in ln or " FATAL " in ln), None)
        causes = [ln.strip() for ln in lines if ln.startswith("Caused by:")][:3]
        head = "\n".join([first, *causes]) + "\n" if first else ""
        return (
            f"{head}--- console (stdout/stderr):\n{_tail(node.console_log, 15)}\n"
            f"--- server.log:\n{_tail_text(chr(10).join(lines), 30) if lines else '(no log written)'}"
        )

    def kill_broker(self, i: int) -> None:
        """SIGKILL node i (0-based), as a crash would; its data stays for restart_broker."""
        node = self.nodes[i]
        if node.proc is not None:
            _signal_group(node.proc, signal.SIGKILL)
            node.proc.wait()

    def stop_broker(self, i: int, grace_s: float = STOP_GRACE_S) -> None:
        _stop_all([self.nodes[i]], grace_s)

    def restart_broker(self, i: int, timeout_s: float = 60) -> None:
        node = self.nodes[i]
        if node.alive():
            _stop_all([node], STOP_GRACE_S)
        self._spawn(node)
        self._wait_ready([node], timeout_s)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        atexit.unregister(self.stop)
        _stop_all(self.nodes, grace_s)
        self.nodes = []
        if self._owned_base is not None:
            shutil.rmtree(self._owned_base, ignore_errors=True)
            self._owned_base = None

    def __enter__(self) -> Self:
        if not self.nodes:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _stop_all(nodes: list[_Node], grace_s: float) -> None:
    procs = [n.proc for n in nodes if n.proc is not None]
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        # SIGKILL the group even after a clean exit: nothing the JVM forked may outlive it
        _signal_group(p, signal.SIGKILL)
        p.wait()
    for n in nodes:
        n.proc = None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log written)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.infra.apache_kafka", description=__doc__)
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--port", type=int, action="append", dest="ports", help="client port; once per broker")
    ap.add_argument("--base-dir", type=Path, help="data dir (default: a temp dir removed on exit)")
    ap.add_argument("--heap", default="384m")
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--fetch-only", action="store_true", help="fetch the jars into the cache and exit")
    args = ap.parse_args(argv)
    if args.fetch_only:
        try:
            print(f"apache-kafka jars: {ensure_jars()}", flush=True)
            print(f"apache-kafka tool jars: {ensure_tool_jars()}", flush=True)
        except InfraError as exc:
            print(f"apache-kafka failed: {exc}", file=sys.stderr)
            return 1
        return 0
    kafka = ApacheKafka()
    on_stop_signals(lambda: sys.exit(0))
    try:
        kafka.start(brokers=args.brokers, base_dir=args.base_dir, ports=args.ports, heap=args.heap,
                    timeout_s=args.timeout, partitions=args.partitions)  # fmt: skip
        print(f"apache-kafka ready: bootstrap={kafka.bootstrap} ({kafka.startup_s:.1f} s)", flush=True)
        while True:
            signal.pause()
    except InfraError as exc:
        print(f"apache-kafka failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
