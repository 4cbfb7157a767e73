"""Fault-injection harness: a whole rxtrail stack on real parts, a bounded traffic driver, kill/restart, and ONE
end-state checker.

- :class:`FaultStack` starts embedded PostgreSQL and a broker (embedded Tansu, or a 3-broker Apache Kafka) on free
  ports in a temp data dir, creates the tables and topics, then runs every service as its own process the way
  ``rxtrail up`` does (``python -m services.cli run <service>``), one process per projection. It watches them
  itself (a restart half a second after any exit, no cap), so the tests measure the consumers, not the
  supervisor; every exit it did not cause is counted in ``crashes``.
- :class:`Traffic` drives journeys over HTTP (visit → prescription → approval → routing by the router →
  acceptance → dispense → delivery or collection; the settlement worker settles), bounded in count and time;
  every POST carries an Idempotency-Key and is retried on connection errors and 5xx.
- :func:`check_end_state` waits for the stack to settle, then checks: every projection equals a rebuild from
  the event store (``services.replay`` into a separate schema, whole tables compared), every approved
  prescription routed and on the gateway's pharmacy feed, every delivered/collected one settled, every visit
  with an approved prescription settled (R15), no trace code sold twice, ``rxtrail verify`` intact. It returns
  the figures and a list of problems (empty = the promise held).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from events import topics
from events.envelope import event_type_of
from projections import registry
from services import simulate
from services.infra.ports import free_ports, log_tail, wait_for_port

REGION = "220100"
SERVICES = ("api", "relay", "router", "settlement", "gateway", "intake", *(f"projection:{n}" for n in registry.NAMES))
"""Every process the harness runs; ``projection:<name>`` is ``rxtrail run projection <name>``."""

KILLABLE = ("relay", "router", "settlement", "gateway", "api", *(f"projection:{n}" for n in registry.NAMES))


def say(msg: str) -> None:
    print(f"[faults {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# --- processes ----------------------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    argv: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = False
    crashes: int = 0

    def start(self, env: dict[str, str]) -> None:
        with open(self.log_file, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        self.starts += 1
        self.expected_exit = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


@dataclass
class FaultStack:
    """Embedded PostgreSQL + a broker + every service as a process. ``kafka``: "tansu" or "apache" (3 brokers,
    replication 3, min.insync.replicas 2)."""

    base: Path
    kafka: str = "tansu"
    partitions: int = 3
    env_overrides: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    database_url: str = ""
    bootstrap: str = ""
    api_port: int = 0
    _pg: Any = None
    _broker: Any = None
    _watch: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _paused: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # parts -----------------------------------------------------------------------------------------------------
    def start(self) -> FaultStack:
        t0 = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "logs").mkdir(exist_ok=True)
        self._start_postgres()
        self._start_broker()
        self._ensure_topics()
        from services.infra.settings import Settings
        from services.infra.stack import prepare_database

        prepare_database(Settings(database_url=self.database_url, kafka_bootstrap=self.bootstrap,
                                  data_dir=self.base))
        self.api_port = free_ports(1)[0]
        env = self.env()
        run = [sys.executable, "-m", "services.cli", "run"]
        for name in SERVICES:
            argv = [*run, *name.split(":")]
            self.procs[name] = Proc(name, argv, self.base / "logs" / f"{name.replace(':', '-')}.log")
        for p in self.procs.values():
            p.start(env)
        if not wait_for_port("127.0.0.1", self.api_port, 60):
            raise RuntimeError(f"api not listening; log:\n{log_tail(self.procs['api'].log_file)}")
        self._watch = threading.Thread(target=self._watcher, name="faults-watch", daemon=True)
        self._watch.start()
        say(f"stack up in {time.monotonic() - t0:.1f}s: pg={self.database_url} kafka={self.bootstrap} "
            f"api={self.api_url} ({self.kafka})")
        return self

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RXTRAIL_DATABASE_URL": self.database_url,
            "RXTRAIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "RXTRAIL_DATA_DIR": str(self.base),
            "RXTRAIL_API_PORT": str(self.api_port),
            "RXTRAIL_PARTITIONS": str(self.partitions),
            "RXTRAIL_RELAY__CHECK_INTERVAL_S": "2",
            "RXTRAIL_RELAY__POLL_INTERVAL_S": "0.2",
            "CREATE_TABLE": "false",
        })
        env.update(self.env_overrides)
        return env

    def settings(self) -> Any:
        from services.infra.settings import Settings

        return Settings(database_url=self.database_url, kafka_bootstrap=self.bootstrap, data_dir=self.base,
                        api_port=self.api_port)

    def _start_postgres(self) -> None:
        from services.infra.embedded import EmbeddedPostgres
        from services.infra.ports import start_on_free_port

        def start(port: int) -> tuple[Any, str]:
            server = EmbeddedPostgres(self.base / "pg", port)
            return server, server.start()

        self._pg, self.database_url = start_on_free_port(start)

    def _start_broker(self) -> None:
        if self.kafka == "apache":
            from services.infra.apache_kafka import ApacheKafka

            self._broker = ApacheKafka().start(brokers=3, base_dir=self.base / "kafka", partitions=self.partitions,
                                               timeout_s=150)
            self.bootstrap = self._broker.bootstrap
            return
        from services.infra.embedded import Tansu
        from services.infra.ports import start_on_free_port

        def start(port: int) -> tuple[Any, str]:
            broker = Tansu(self.base / "tansu", port)
            return broker, broker.start()

        self._broker, self.bootstrap = start_on_free_port(start)

    def _ensure_topics(self) -> None:
        from services.infra.kafka_admin import ensure_topics

        ensure_topics(self.bootstrap, topics.CORE_TOPICS, self.partitions, replication=3 if self.kafka == "apache" else 1)

    # the watcher: restart whatever exits ------------------------------------------------------------------------
    def _watcher(self) -> None:
        env = self.env()
        while not self._stop.wait(0.5):
            with self._lock:
                for p in self.procs.values():
                    if p.alive() or p.name in self._paused or p.proc is None:
                        continue
                    if not p.expected_exit:
                        p.crashes += 1
                        say(f"{p.name} exited by itself (code {p.proc.returncode}); restarting. Log tail:\n"
                            f"{log_tail(p.log_file, 8)}")
                    p.start(env)

    # faults ---------------------------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL one service process (the watcher restarts it)."""
        with self._lock:
            p = self.procs[name]
            p.expected_exit = True
            p.signal(signal.SIGKILL)
            if p.proc is not None:
                p.proc.wait(10)
        self.kills[name] += 1

    def restart_broker(self, down_s: float = 1.0) -> None:
        """Tansu: SIGKILL and start again on the same port (memory storage: it comes back EMPTY, as in the issue).
        Apache: not used (see kill_apache_broker)."""
        assert self.kafka == "tansu"
        pid = self._broker.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._broker.proc is not None:
            self._broker.proc.wait(10)
            self._broker.proc = None
        self._broker.pid_file.unlink(missing_ok=True)
        time.sleep(down_s)
        self._broker.start()
        self._ensure_topics()
        self.kills["broker"] += 1

    def kill_apache_broker(self, i: int) -> None:
        self._broker.kill_broker(i)
        self.kills[f"kafka-{i + 1}"] += 1

    def restart_apache_broker(self, i: int) -> None:
        self._broker.restart_broker(i, timeout_s=120)

    def restart_postgres(self, down_s: float = 5.0) -> None:
        """Stop PostgreSQL (fast shutdown: clients are disconnected), stay down ``down_s``, start it again on the
        same port and data."""
        self._pg.stop()
        self.kills["postgres"] += 1
        time.sleep(down_s)
        self._pg.start()

    def stop_postgres(self) -> None:
        self._pg.stop()
        self.kills["postgres"] += 1

    def start_postgres(self) -> None:
        self._pg.start()

    def crashes(self) -> dict[str, int]:
        return {p.name: p.crashes for p in self.procs.values() if p.crashes}

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(5)
        for p in self.procs.values():
            p.expected_exit = True
            p.signal(signal.SIGTERM)
        for p in self.procs.values():
            if p.proc is not None:
                try:
                    p.proc.wait(10)
                except subprocess.TimeoutExpired:
                    p.signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._broker.stop()
        with contextlib.suppress(Exception):
            self._pg.stop()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``rxtrail <args>`` against this stack."""
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout)


# --- the cast and the traffic -------------------------------------------------------------------------------------

@dataclass
class Cast:
    run: str
    hospital: str
    physician: str
    pharmacist: str
    pharmacies: list[str]
    keys: dict[str, str]


def register_cast(stack: FaultStack) -> Cast:
    """A hospital with its physician and pharmacist, two designated pharmacies carrying metformin, the metformin
    listed with the region's cap (R7, R17); API keys."""
    from services.adapters.api_keys import create_key, ensure_schema, parse_party
    from services.application.registries import starter_commands
    from services.bootstrap import build_application
    from tests.support.cast import list_drugs

    run = secrets.token_hex(3).upper()
    hospital, physician, pharmacist = f"H-F-{run}", f"DR-F-{run}", f"PHM-F-{run}"
    pharmacies = [f"PY-F-{run}-A", f"PY-F-{run}-B"]
    app = build_application(stack.settings())
    try:
        outcomes = app.apply_batch(starter_commands(
            changed_by=f"agency:{REGION}", region=REGION, hospital=hospital, physicians=[physician],
            pharmacist=pharmacist, pharmacies=pharmacies, drug_codes=(simulate.CATALOG_METFORMIN,),
            key_prefix=f"f:{run}"))
        assert all(o.ok for o in outcomes), outcomes
        list_drugs(app, REGION)
    finally:
        app.close()
    parties = [f"hospital:{hospital}", f"pharmacist:{pharmacist}", *[f"pharmacy:{p}" for p in pharmacies]]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        ensure_schema(conn)
        keys = {p: create_key(conn, parse_party(p), datetime.now(UTC), label=f"faults {run}") for p in parties}
    return Cast(run, hospital, physician, pharmacist, pharmacies, keys)


def insure_patients(stack: FaultStack, n: int) -> list[str]:
    """``n`` new patients insured in ``REGION`` (R17 reads the insurance at the visit; R4 counts each patient's
    running supply, so every journey has a patient of its own)."""
    from services.bootstrap import build_application
    from tests.support.cast import new_national_id, patient_commands

    ids = [new_national_id(REGION) for _ in range(n)]
    app = build_application(stack.settings())
    try:
        for start in range(0, n, 500):
            outcomes = app.apply_batch([cmd for nid in ids[start:start + 500] for cmd in patient_commands(nid, REGION)])
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    finally:
        app.close()
    return ids


def visit_body(cast: Cast, national_id: str, **kw: Any) -> dict[str, Any]:
    """``POST /hospital/visits`` of an insured patient at the cast's hospital: the registered physical institution,
    the region's consultation price (R15), no request-side registry facts (R17)."""
    from tests.support.cast import consultation_fee

    return simulate.visit_body(cast.hospital, cast.physician, REGION, national_id=national_id,
                               original_institution_id=f"P-{cast.hospital}",
                               consultation_fee=str(consultation_fee(REGION)), registry_facts=False, **kw)


def sign(cast: Cast, body: dict[str, Any], visit: dict[str, Any]) -> dict[str, Any]:
    """``body`` (a ``POST /hospital/prescriptions`` body, complete) signed with the physician's registered key (R2)."""
    from services.application.registries import starter_signing_key
    from services.domain.signature import sign_prescription_request

    body["physician_signature"] = sign_prescription_request(
        starter_signing_key(cast.physician), body, hospital_id=cast.hospital, physician_id=cast.physician,
        diagnosis_code=visit["diagnosis_code"])
    return body


@dataclass
class TrafficStats:
    journeys_started: int = 0
    journeys_done: int = 0
    journeys_abandoned: int = 0
    posts: int = 0
    retries: int = 0
    route_wait_max_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    prescriptions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"journeys {self.journeys_done}/{self.journeys_started} done ({self.journeys_abandoned} abandoned), "
                f"{self.posts} POSTs, {self.retries} retries, longest wait for the router {self.route_wait_max_s:.1f}s, "
                f"statuses {dict(self.statuses)}")


class Traffic:
    """``clients`` threads, each running journeys one after another until ``max_journeys`` in all were started
    or ``max_seconds`` passed. A journey waits at most ``route_wait_s`` for the router; after that it is left
    approved (the end-state check then demands the router catch up)."""

    def __init__(self, stack: FaultStack, cast: Cast, *, clients: int = 3, max_journeys: int = 60,
                 max_seconds: float = 60.0, route_wait_s: float = 30.0, seed: int = 12) -> None:
        self.stack, self.cast = stack, cast
        self.clients, self.max_journeys, self.max_seconds = clients, max_journeys, max_seconds
        self.route_wait_s = route_wait_s
        self.stats = TrafficStats()
        self._counter = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._deadline = 0.0
        self._rng = random.Random(seed)
        self._patients: list[str] = []
        self._lock = threading.Lock()

    def start(self) -> Traffic:
        self._patients = insure_patients(self.stack, self.max_journeys)
        self._deadline = time.monotonic() + self.max_seconds
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), name=f"traffic-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()

    def run_on_for(self, seconds: float) -> None:
        """Keep starting journeys for at least ``seconds`` from now (after a fault: a client whose journey waited
        out ``route_wait_s`` while the stage recovered must still get to start one after it)."""
        self._deadline = max(self._deadline, time.monotonic() + seconds)

    def join(self, timeout: float = 120.0) -> TrafficStats:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.stats

    # one client -------------------------------------------------------------------------------------------------
    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.stack.api_url, timeout=15.0) as http:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                n = next(self._counter)
                if n >= self.max_journeys:
                    return
                with self._lock:
                    self.stats.journeys_started += 1
                try:
                    done = self._journey(http, n)
                except Exception as exc:
                    with self._lock:
                        self.stats.errors.append(f"journey {n}: {exc!r}"[:300])
                    done = False
                with self._lock:
                    if done:
                        self.stats.journeys_done += 1
                    else:
                        self.stats.journeys_abandoned += 1

    def _post(self, http: httpx.Client, party: str, path: str, body: dict[str, Any], key: str,
              expect: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
        token = self.cast.keys[party]
        end = time.monotonic() + 60
        while True:
            try:
                r = http.post(path, json=body, headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
                with self._lock:
                    self.stats.posts += 1
                    self.stats.statuses[r.status_code] += 1
                if r.status_code in expect:
                    return dict(r.json())
                if r.status_code < 500 and r.status_code not in (408, 429):
                    raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:200]}")
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > end or self._stop.is_set():
                raise RuntimeError(f"POST {path}: no answer within 60s")
            with self._lock:
                self.stats.retries += 1
            time.sleep(0.3)

    def _status(self, http: httpx.Client, rx: str) -> dict[str, Any] | None:
        try:
            r = http.get(f"/hospital/prescriptions/{rx}",
                         headers={"Authorization": f"Bearer {self.cast.keys[f'hospital:{self.cast.hospital}']}"})
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            return None

    def _journey(self, http: httpx.Client, n: int) -> bool:
        c = self.cast
        h, ph = f"hospital:{c.hospital}", f"pharmacist:{c.pharmacist}"
        k = f"{c.run}:{n}"
        visit = visit_body(c, self._patients[n], visit_ref=f"V-{k}")
        encounter = self._post(http, h, "/hospital/visits", visit, f"{k}:visit")["aggregate_id"]
        body = simulate.prescription_body(str(encounter), quantity=2, prescription_ref=f"RX-{k}")
        if n % 2 == 0:
            body["preferred_pharmacy_id"] = c.pharmacies[n % len(c.pharmacies)]
        rx = str(self._post(http, h, "/hospital/prescriptions", sign(c, body, visit), f"{k}:rx")["aggregate_id"])
        with self._lock:
            self.stats.prescriptions.append(rx)
        self._post(http, ph, f"/pharmacist/prescriptions/{rx}/approval", {}, f"{k}:approve")
        approved_at = time.monotonic()
        end = approved_at + self.route_wait_s
        pharmacy = None
        while time.monotonic() < end and not self._stop.is_set():
            seen = self._status(http, rx)
            if seen and seen.get("status") not in (None, "issued", "approved") and seen.get("dispenser_id"):
                pharmacy = str(seen["dispenser_id"])
                break
            time.sleep(0.3)
        with self._lock:
            self.stats.route_wait_max_s = max(self.stats.route_wait_max_s, time.monotonic() - approved_at)
        if pharmacy is None or f"pharmacy:{pharmacy}" not in c.keys:
            return False
        p = f"pharmacy:{pharmacy}"
        base = f"/pharmacy/prescriptions/{rx}"
        self._post(http, p, f"{base}/acceptance", {}, f"{k}:accept")
        self._post(http, p, f"{base}/dispenses", simulate.dispense_body(2), f"{k}:dispense")
        if n % 3 == 0:
            self._post(http, p, f"{base}/collection", {"verification_method": "e_voucher"}, f"{k}:collect")
        else:
            self._post(http, p, f"{base}/delivery", {"delivery_enterprise_id": "DE-F", "delivery_fee": "6.00",
                                                    "fee_disclosed": True}, f"{k}:delivery")
            self._post(http, p, f"{base}/delivered", {"delivery_enterprise_id": "DE-F"}, f"{k}:delivered")
        return True


# --- the end-state checker ------------------------------------------------------------------------------------------

@dataclass
class EndState:
    problems: list[str]
    figures: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"end state: {'OK' if self.ok else 'BROKEN'}; figures: {json.dumps(self.figures, default=str)}"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _store_streams(database_url: str) -> tuple[dict[uuid.UUID, list[str]], dict[uuid.UUID, uuid.UUID]]:
    """Each stream's event types in version order, and each prescription's visit (the ``encounter_id`` of its
    ``PrescriptionIssued``), straight from the event store."""
    from services.adapters.event_log import discover_logs

    streams: dict[uuid.UUID, list[str]] = defaultdict(list)
    visit_of: dict[uuid.UUID, uuid.UUID] = {}
    with psycopg.connect(database_url) as conn:
        for table in discover_logs(conn):
            for oid, _v, topic in conn.execute(sql.SQL(
                    "SELECT originator_id, originator_version, topic FROM {} ORDER BY originator_id, originator_version"
            ).format(sql.Identifier(table))):
                streams[oid].append(event_type_of(topic))
            for oid, topic, state in conn.execute(sql.SQL(
                    "SELECT originator_id, topic, state FROM {} WHERE topic LIKE %s").format(sql.Identifier(table)),
                    ("%PrescriptionIssued",)):
                if event_type_of(topic) == "PrescriptionIssued":
                    visit_of[oid] = uuid.UUID(str(json.loads(bytes(state))["encounter_id"]))
    return streams, visit_of


def domain_problems(database_url: str) -> tuple[list[str], dict[str, int]]:
    """The promises the workers keep, read from the record itself."""
    streams, visit_of = _store_streams(database_url)
    prescribed = {visit_of[sid] for sid, types in streams.items() if "PrescriptionApproved" in types and sid in visit_of}
    problems: list[str] = []
    figures: Counter[str] = Counter()
    unrouted, unsettled, visits_unsettled, sold_twice = [], [], [], []
    for sid, types in streams.items():
        figures["events"] += len(types)
        ts = set(types)
        if "PrescriptionIssued" in ts:
            figures["prescriptions"] += 1
            if "PrescriptionApproved" in ts and "PrescriptionRouted" not in ts and not ts & {
                    "PrescriptionCancelled", "PrescriptionExpired", "PrescriptionRevoked"}:
                unrouted.append(sid)
            if ts & {"PrescriptionDelivered", "PrescriptionCollected"}:
                figures["delivered_or_collected"] += 1
                if "PrescriptionSettled" not in ts:
                    unsettled.append(sid)
        if "FollowUpVisitRecorded" in ts:
            figures["visits"] += 1
            if sid in prescribed and "ConsultationSettled" not in ts:  # R15: paid once a prescription is approved
                visits_unsettled.append(sid)
        if "TraceCodeSold" in ts:
            figures["trace_codes"] += 1
            held = 0
            for t in types:
                if t == "TraceCodeSold":
                    held += 1
                    if held > 1:
                        sold_twice.append(sid)
                        break
                elif t == "TraceCodeReturned":
                    held = max(0, held - 1)
    routed = {sid for sid, types in streams.items() if "PrescriptionRouted" in types}
    try:
        with psycopg.connect(database_url) as conn:
            fed = {r[0] for r in conn.execute(
                "SELECT DISTINCT prescription_id FROM gateway.feed WHERE event_type = 'PrescriptionRouted'")}
        unfed = sorted(routed - fed, key=str)
        if unfed:
            problems.append(f"{len(unfed)} routed prescription(s) missing from the gateway's pharmacy feed, "
                            f"e.g. {unfed[:3]}")
    except psycopg.errors.UndefinedTable:
        problems.append("the gateway's feed table (gateway.feed) does not exist")
    if unrouted:
        problems.append(f"{len(unrouted)} approved prescription(s) never routed, e.g. {unrouted[:3]}")
    if unsettled:
        problems.append(f"{len(unsettled)} delivered/collected prescription(s) never settled, e.g. {unsettled[:3]}")
    if visits_unsettled:
        problems.append(f"{len(visits_unsettled)} visit(s) with an approved prescription never settled, "
                        f"e.g. {visits_unsettled[:3]}")
    if sold_twice:
        problems.append(f"{len(sold_twice)} trace code(s) sold twice, e.g. {sold_twice[:3]}")
    return problems, dict(figures)


def _behind(database_url: str) -> int:
    from tests.support.read_side import behind

    return behind(database_url, tuple(registry.NAMES))


def lagging_streams(database_url: str) -> dict[str, list[str]]:
    """Per projection, the streams it has not applied up to the store's last version ("<id> v<applied>/<last>")."""
    from services.adapters.store import EVENTS_TABLE

    out: dict[str, list[str]] = {}
    with psycopg.connect(database_url) as conn:
        for schema in registry.NAMES:
            try:
                rows = conn.execute(sql.SQL(
                    "SELECT e.originator_id, coalesce(s.version, 0), e.v FROM (SELECT originator_id, "
                    "max(originator_version) AS v FROM {} GROUP BY originator_id) e LEFT JOIN {}.stream_versions s "
                    "ON s.aggregate_id = e.originator_id WHERE s.version IS NULL OR s.version < e.v").format(
                        sql.Identifier(EVENTS_TABLE), sql.Identifier(schema))).fetchall()
            except psycopg.errors.UndefinedTable:
                conn.rollback()
                out[schema] = ["(no tables)"]
                continue
            if rows:
                out[schema] = [f"{r[0]} v{r[1]}/{r[2]}" for r in rows]
    return out


def wait_settled(stack: FaultStack, timeout: float = 90.0, stalled_s: float = 25.0) -> tuple[bool, float]:
    """Poll until the projections applied every recorded event and the workers' promises hold; give up after
    ``timeout``, or after ``stalled_s`` without any change (a stage that skipped will never catch up)."""
    t0 = time.monotonic()
    last: Any = None
    changed_at = t0
    while time.monotonic() - t0 < timeout:
        try:
            behind = _behind(stack.database_url)
            problems, figures = domain_problems(stack.database_url)
            if behind == 0 and not problems:
                return True, time.monotonic() - t0
            now = (behind, problems, figures.get("events"))
            if now != last:
                last, changed_at = now, time.monotonic()
            elif time.monotonic() - changed_at > stalled_s:
                break
        except psycopg.Error:
            pass
        time.sleep(1.0)
    return False, time.monotonic() - t0


def _short(rows: list[Any]) -> str:
    return "; ".join(repr(r)[:110] for r in rows[:2])


def compare_with_rebuild(database_url: str, bootstrap: str | None = None) -> tuple[list[str], int]:
    """Rebuild every projection from the event store (or, with ``bootstrap``, from rx.events) into its own schema
    and compare whole tables with the live one. Returns problems and the number of rows compared."""
    from services.replay import replay
    from tests.support.trails import differences, dump

    problems: list[str] = []
    rows = 0
    source = "kafka" if bootstrap else "store"
    for name in registry.NAMES:
        check = f"fchk_{source}_{name}"
        try:
            replay(name, database_url, bootstrap, from_store=bootstrap is None, progress=False, schema=check)
        except Exception as exc:  # a rebuild that cannot finish is a finding, not the end of the check
            problems.append(f"rebuild of {name} from the {source} failed: {exc.__class__.__name__}: {exc}"[:400])
            continue
        live, rebuilt = dump(database_url, name), dump(database_url, check)
        rows += sum(len(v) for v in rebuilt.values())
        diff = differences({name: live}, {name: rebuilt})
        for where, d in diff.items():
            problems.append(f"{where} differs from a rebuild from the {source}: rows live/rebuilt {d['rows']}; "
                            f"only live: {_short(d['only_got'])} | only rebuilt: {_short(d['only_want'])}")
    return problems, rows


def check_end_state(stack: FaultStack, *, settle_timeout: float = 90.0, kafka_replay: bool = False,
                    extra: dict[str, Any] | None = None) -> EndState:
    """THE end-state check (see the module docstring)."""
    settled, waited = wait_settled(stack, settle_timeout)
    problems: list[str] = []
    if not settled:
        lag = lagging_streams(stack.database_url)
        problems.append(f"not settled after {waited:.0f}s (stalled): projections behind the store: "
                        + ", ".join(f"{k} {len(v)} stream(s) e.g. {v[:2]}" for k, v in lag.items()))
    dp, figures = domain_problems(stack.database_url)
    problems += dp
    rp, rows = compare_with_rebuild(stack.database_url)
    problems += rp
    figures_out: dict[str, Any] = {**figures, "rows_compared": rows, "settle_s": round(waited, 1)}
    if kafka_replay:
        kp, krows = compare_with_rebuild(stack.database_url, stack.bootstrap)
        problems += kp
        figures_out["rows_compared_kafka"] = krows
    v = stack.cli("verify")
    if v.returncode != 0 or "INTACT" not in v.stdout.upper():
        problems.append(f"rxtrail verify: exit {v.returncode}: {(v.stdout + v.stderr)[-400:]}")
    figures_out["kills"] = dict(stack.kills)
    figures_out["kills_total"] = sum(stack.kills.values())
    figures_out["crashes"] = stack.crashes()
    figures_out.update(extra or {})
    state = EndState(problems, figures_out)
    say(state.report())
    return state


def max_notification_id(database_url: str) -> int:
    from services.adapters.event_log import discover_logs

    with psycopg.connect(database_url) as conn:
        return max((int(conn.execute(sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
            sql.Identifier(t))).fetchone()[0]) for t in discover_logs(conn)), default=0)  # type: ignore[index]
