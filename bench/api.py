"""Benchmark the party interfaces (run by hand: ``.venv/bin/python bench/api.py [--rate 200 --seconds 20]``).

Starts its own embedded PostgreSQL and Tansu, then:

1. HTTP: the API as ``rxtrail run api`` (``Settings.api_workers`` processes, one per core by default); an
   open-loop load generator starts prescription journeys so that requests arrive at ``--rate`` per second: visit →
   issue → approve → route → accept → dispense (6 requests each, sequential within a journey). Reports p50/p99
   latency per operation and overall, achieved throughput, errors, and the CPU time per request of the API
   processes, of PostgreSQL and of the load generator itself (CPU per request moves far less with a shared
   machine than latency does). ``--rates 200,300,400,500`` runs one step per rate and prints a line per step and
   the saturation point: the highest step served at the offered rate (≥ 95 %) with p99 < 50 ms and no errors.
2. Kafka intake: ``--commands`` visit commands on one hospital topic (12 partitions), consumed by the intake worker
   with batches of ``--batch`` (apply_batch per run); reports commands/s from first fetch to last outcome
   (``--commands 0`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SECRET = "bench-pseudonym-secret-0123456789"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class CpuMeter:
    """CPU seconds (user + system) spent since the last ``take()`` by the API processes (the server and its
    workers), PostgreSQL (postmaster and backends) and this process (the load generator)."""

    def __init__(self, api_pid: int, pgdata: Path) -> None:
        import psutil

        self.api = psutil.Process(api_pid)
        self.pg = [p for p in psutil.process_iter(["cmdline"]) if str(pgdata) in " ".join(p.info["cmdline"] or ())]
        self.me = psutil.Process()
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        import psutil

        def cpu(procs: list[Any]) -> float:
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                total += t.user + t.system
            return total

        pg = [c for p in self.pg for c in [p, *_children(p)]]
        return {"api": cpu([self.api, *_children(self.api)]), "postgres": cpu(pg), "client": cpu([self.me])}

    def take(self) -> dict[str, float]:
        now = self._now()
        spent = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return spent


def _children(proc: Any) -> list[Any]:
    import psutil

    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


@dataclass(frozen=True)
class Parties:
    """The parties the load runs as: one hospital with its physician and pharmacist, one pharmacy."""

    hospital: str = "BENCH-H1"
    physician: str = "BENCH-DR1"
    pharmacist: str = "BENCH-PHM1"
    pharmacy: str = "BENCH-PY1"
    region: str = "220100"  # Changchun: pharmacies are paid directly


def register_parties(app: Any) -> Parties:
    from services.application.registries import starter_commands

    parties = Parties()
    outcomes = app.apply_batch(starter_commands(
        changed_by=f"agency:{parties.region}", region=parties.region, hospital=parties.hospital,
        physicians=[parties.physician], pharmacist=parties.pharmacist, pharmacies=[parties.pharmacy]))
    if not all(o.ok for o in outcomes):
        raise SystemExit(f"could not register the parties: {outcomes}")
    from tests.support.cast import list_drugs

    list_drugs(app, parties.region)  # the reference metformin the bodies prescribe, with the region's cap (R7, R17)
    return parties


def insured_patients(app: Any, parties: Parties, n: int) -> list[str]:
    """``n`` patients insured in the parties' region (R17 reads it at the visit), registered before the load."""
    from tests.support.cast import new_national_id, patient_commands

    ids = [new_national_id(parties.region) for _ in range(n)]
    for start in range(0, n, 500):
        outcomes = app.apply_batch([cmd for nid in ids[start:start + 500] for cmd in patient_commands(nid, parties.region)])
        if not all(o.ok for o in outcomes):
            raise SystemExit(f"could not register the patients: {[o for o in outcomes if not o.ok][:3]}")
    return ids


def api_keys(database_url: str, parties: Parties) -> dict[str, str]:
    """A bearer token per party kind: ``{"hospital": "rx_...", "pharmacist": ..., "pharmacy": ...}``."""
    import psycopg

    from services.adapters.api_keys import create_key, ensure_schema, parse_party

    ids = {"hospital": parties.hospital, "pharmacist": parties.pharmacist, "pharmacy": parties.pharmacy}
    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        return {kind: create_key(conn, parse_party(f"{kind}:{pid}"), datetime.now(UTC), label="bench")
                for kind, pid in ids.items()}


class Client:
    """A minimal HTTP/1.1 keep-alive client for the load (JSON in, JSON out): httpx spent more CPU per request
    than the API itself, and the load generator shares the machine's cores with the API and PostgreSQL."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    KEEP_IDLE_S = 4.0
    """uvicorn closes a connection idle for 5 s (timeout_keep_alive): one idle longer is not reused, or a request
    sent on it as the server closes it fails (IncompleteReadError) without ever reaching the API."""

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < self.KEEP_IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, headers: dict[str, str], body: Any = None
                      ) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{head}Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
        reader, writer = await self._connection()
        try:
            writer.write(data)
            status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in rest.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is None:
                raise ValueError(f"no Content-Length in the answer: {status_line!r}")
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer, time.monotonic()))
        return int(status_line.split()[1]), json.loads(answer) if answer else None

    async def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def http_load(base: str, keys: dict[str, str], parties: Parties, rate: float, seconds: float,
                    patients: list[str], meter: CpuMeter | None = None) -> dict[str, Any]:

    from services.application.registries import starter_signing_key
    from services.domain.signature import sign_prescription_request
    from services.simulate import dispense_body, prescription_body, visit_body
    from tests.support.cast import consultation_fee

    physician_key = starter_signing_key(parties.physician)
    fee = str(consultation_fee(parties.region))  # the region's price (R15)

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    h = {"Authorization": f"Bearer {keys['hospital']}"}
    ph = {"Authorization": f"Bearer {keys['pharmacist']}"}
    py = {"Authorization": f"Bearer {keys['pharmacy']}"}
    client = Client(base)
    try:
        async def call(name: str, method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
            t0 = time.perf_counter()
            try:
                status, answer = await asyncio.wait_for(client.request(method, path, headers, body), 30)
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors[f"{name} {type(e).__name__}"] += 1
                return None
            latencies[name].append(time.perf_counter() - t0)
            if status >= 300:
                errors[f"{name} {status}"] += 1
                return None
            return answer

        async def journey() -> None:
            visit = visit_body(parties.hospital, parties.physician, parties.region, national_id=patients.pop(),
                               original_institution_id=f"P-{parties.hospital}", consultation_fee=fee,
                               registry_facts=False)
            v = await call("visit", "POST", "/hospital/visits", h, visit)
            if not v:
                return
            body = prescription_body(v["aggregate_id"])
            body["physician_signature"] = sign_prescription_request(
                physician_key, body, hospital_id=parties.hospital, physician_id=parties.physician,
                diagnosis_code=visit["diagnosis_code"])
            p = await call("issue", "POST", "/hospital/prescriptions", h, body)
            if not p:
                return
            rx = p["aggregate_id"]
            if not await call("approve", "POST", f"/pharmacist/prescriptions/{rx}/approval", ph, {}):
                return
            if not await call("route", "POST", f"/hospital/prescriptions/{rx}/routing", h,
                              {"pharmacy_id": parties.pharmacy, "basis": "patient_choice"}):
                return
            if not await call("accept", "POST", f"/pharmacy/prescriptions/{rx}/acceptance", py, {}):
                return
            await call("dispense", "POST", f"/pharmacy/prescriptions/{rx}/dispenses", py, dispense_body(4))

        journeys_per_s = rate / 6
        tasks = []
        if meter is not None:
            meter.take()
        started = time.perf_counter()
        n = 0
        while (now := time.perf_counter() - started) < seconds:
            due = int(now * journeys_per_s) + 1
            while n < due:
                tasks.append(asyncio.create_task(journey()))
                n += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    everything = [x for v in latencies.values() for x in v]
    spent = meter.take() if meter is not None else {}
    return {
        "journeys": n, "requests": len(everything), "seconds": round(elapsed, 2),
        "throughput_rps": round(len(everything) / elapsed, 1), "errors": dict(errors),
        "p50_ms": round(pct(everything, 0.5) * 1000, 1), "p99_ms": round(pct(everything, 0.99) * 1000, 1),
        "cpu_ms_per_request": {k: round(v * 1000 / max(1, len(everything)), 2) for k, v in spent.items()},
        "cpu_cores_busy": {k: round(v / elapsed, 2) for k, v in spent.items()},
        "by_operation": {k: {"n": len(v), "p50_ms": round(pct(v, 0.5) * 1000, 1),
                             "p99_ms": round(pct(v, 0.99) * 1000, 1)} for k, v in latencies.items()},
    }


P99_TARGET_MS = 50.0
"""Issue 15: 500 req/s sustained with p99 under 50 ms and no errors."""


def served(step: dict[str, Any]) -> bool:
    """A step the API kept up with: ≥ 95 % of the offered rate, p99 under the target, no errors."""
    return (step["throughput_rps"] >= 0.95 * step["target_rps"] and step["p99_ms"] < P99_TARGET_MS
            and not sum(step["errors"].values()))


def saturation(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest offered rate served (``served``) and the highest rate achieved at any step."""
    ok = [s["target_rps"] for s in steps if served(s)]
    return {"saturation_point_rps": max(ok) if ok else None,
            "max_achieved_rps": max(s["throughput_rps"] for s in steps)}


def step_line(step: dict[str, Any]) -> str:
    cpu = step["cpu_ms_per_request"]
    return (f"offered {step['target_rps']:6.0f} req/s  achieved {step['throughput_rps']:6.1f}  "
            f"p50 {step['p50_ms']:7.1f} ms  p99 {step['p99_ms']:7.1f} ms  errors {sum(step['errors'].values()):4d}  "
            f"CPU ms/request: api {cpu.get('api', 0):.2f} postgres {cpu.get('postgres', 0):.2f} "
            f"client {cpu.get('client', 0):.2f}  {'served' if served(step) else 'NOT served'}")


async def intake_load(database_url: str, bootstrap: str, application: Any, parties: Parties, commands: int,
                      batch: int, patients: list[str]) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    from tests.support.cast import consultation_fee

    fee = str(consultation_fee(parties.region))

    from events import topics
    from services.infra.kafka_admin import ensure_topics_async
    from services.simulate import visit_body
    from services.workers.intake import create_intake

    topic = topics.inbound_topic(parties.hospital)
    await ensure_topics_async(bootstrap, [topic, topics.REJECTIONS, topics.DLQ], 12)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    for i in range(commands):
        ref = f"bench-{i}"
        body = {"kind": "record_follow_up_visit", "command_id": ref, "hospital_id": parties.hospital,
                **visit_body(parties.hospital, parties.physician, parties.region, visit_ref=ref,
                             national_id=patients.pop(), original_institution_id=f"P-{parties.hospital}",
                             consultation_fee=fee, registry_facts=False)}
        await producer.send(topic, json.dumps(body).encode(), key=ref.encode())
    await producer.flush()
    await producer.stop()
    produce_s = time.perf_counter() - t0

    worker = create_intake(application, bootstrap,
                           group_id="bench-intake", max_records=batch, session_timeout_ms=6000,
                           heartbeat_interval_ms=1000, pattern=rf"rx\.inbound\.{parties.hospital}")
    await worker.start()
    stats = worker.intake.stats
    first: float | None = None
    deadline = time.perf_counter() + 600
    while stats.ok + stats.rejected + stats.dead_lettered < commands and time.perf_counter() < deadline:
        if first is None and stats.batches:
            first = time.perf_counter()
        await asyncio.sleep(0.01)
    done = time.perf_counter()
    await worker.stop()
    span = done - (first or done)
    return {"commands": commands, "max_records": batch, "produce_s": round(produce_s, 2),
            "applied": stats.ok, "rejected": stats.rejected, "batches": stats.batches,
            "seconds_after_first_batch": round(span, 2),
            "commands_per_s": round((stats.ok + stats.rejected) / span, 1) if span else None}


def check_after(database_url: str, bootstrap: str, env: dict[str, str]) -> dict[str, Any]:
    """After the load: the record is intact, no trace code was sold twice, and the projections the live consumers
    built (relay → rx.events → ``rxtrail run projection all``, started after the load) equal a rebuild from the
    event store. Any failure makes the bench exit non-zero."""
    import psycopg

    from projections.base import stored_offsets
    from projections.registry import NAMES
    from services.integrity.verify import verify
    from services.replay import end_offsets, replay
    from tests.support.trails import dump

    stages = [subprocess.Popen([sys.executable, "-m", "services.cli", "run", *service], env=env, cwd=ROOT)
              for service in (["relay"], ["projection", "all"])]
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 600
            while True:  # caught up: every projection's stored offsets are the topic's ends, the relay is done
                time.sleep(1)
                relayed = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
                ends = {p: o for p, o in asyncio.run(end_offsets(bootstrap, "rx.events")).items() if o}
                try:
                    done = [{p: o for p, o in stored_offsets(conn, name, "rx.events").items() if o} for name in NAMES]
                except psycopg.Error:  # a consumer has not made its schema yet
                    continue
                if relayed and sum(ends.values()) >= relayed[0] and all(d == ends for d in done):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("projections did not catch up in 600 s")
    finally:
        for stage in stages:
            stage.terminate()
            stage.wait(30)
    report = verify(database_url, bootstrap)
    with psycopg.connect(database_url, autocommit=True) as conn:
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT originator_id FROM rxtrail_events WHERE topic LIKE '%%:TraceCodeSold' "
            "GROUP BY originator_id HAVING count(*) > 1 + (SELECT count(*) FROM rxtrail_events r WHERE "
            "r.originator_id = rxtrail_events.originator_id AND r.topic LIKE '%%:TraceCodeReturned')) t"
        ).fetchone()
        sales = conn.execute("SELECT count(*) FROM rxtrail_events WHERE topic LIKE '%%:TraceCodeSold'").fetchone()
    differing = []
    for name in NAMES:
        replay(name, database_url, None, from_store=True, schema=f"{name}_check", progress=False)
        live, rebuilt = dump(database_url, name), dump(database_url, f"{name}_check")
        if live != rebuilt:
            differing.append(name)
    checks = {"verify_intact": report.exit_code == 0, "verify_events": report.events,
              "trace_code_sales": sales[0] if sales else 0, "codes_sold_twice": twice[0] if twice else None,
              "projections_differing_from_rebuild": differing}
    if report.exit_code != 0 or (twice and twice[0]) or differing:
        print(json.dumps(checks, indent=2))
        raise SystemExit(f"after the load the checks failed: {checks}; findings: {report.findings[:5]}")
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP requests per second (open loop)")
    parser.add_argument("--rates", default="",
                        help="comma-separated offered rates, one step each (e.g. 200,300,400,500): prints a line per "
                             "step and the saturation point; overrides --rate")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load (per step with --rates)")
    parser.add_argument("--commands", type=int, default=5000, help="Kafka intake commands (0: skip the intake)")
    parser.add_argument("--batch", type=int, default=500, help="intake max_records per batch")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the checks after the load (verify, R8, projections = rebuild)")
    args = parser.parse_args()

    import logging

    from services.infra.runtime import configure_logging

    configure_logging(logging.WARNING)
    from services.bootstrap import build_application
    from services.infra.embedded import EmbeddedPostgres, Tansu
    from services.infra.ports import free_port, wait_for_port
    from services.infra.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="rxtrail-bench-", dir="/var/tmp"))
    pg = EmbeddedPostgres(work / "pg", free_port())
    database_url = pg.start()
    broker = Tansu(work / "tansu", free_port())
    bootstrap = broker.start()
    api: subprocess.Popen[bytes] | None = None
    app = None
    try:
        app = build_application(Settings(database_url=database_url, pseudonym_secret=SECRET))
        parties = register_parties(app)
        tokens = api_keys(database_url, parties)
        port = free_port()
        env = {**os.environ, "RXTRAIL_DATABASE_URL": database_url, "RXTRAIL_KAFKA_BOOTSTRAP": bootstrap,
               "RXTRAIL_PSEUDONYM_SECRET": SECRET, "RXTRAIL_DATA_DIR": str(work), "RXTRAIL_API_HOST": "127.0.0.1",
               "RXTRAIL_API_PORT": str(port), "RXTRAIL_LOG_LEVEL": "WARNING"}
        api = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "api"], env=env, cwd=ROOT)
        if not wait_for_port("127.0.0.1", port, 30):
            raise SystemExit("API did not start")
        base = f"http://127.0.0.1:{port}"
        rates = [float(r) for r in args.rates.split(",") if r.strip()] or [args.rate]
        patients = insured_patients(app, parties, int((sum(rates) * args.seconds + 40) / 6 * 1.2) + 20)
        asyncio.run(http_load(base, tokens, parties, 20, 2, patients))  # warm-up (pools, caches)
        meter = CpuMeter(api.pid, pg.pgdata)
        steps = []
        for rate in rates:
            step = asyncio.run(http_load(base, tokens, parties, rate, args.seconds, patients, meter))
            steps.append({"target_rps": rate, **step})
            print(step_line(steps[-1]), file=sys.stderr, flush=True)
        http: dict[str, Any] = steps[-1] if len(steps) == 1 else {"steps": steps, **saturation(steps)}
        if len(steps) > 1:
            print(f"saturation point: {http['saturation_point_rps']} req/s offered (p99 < {P99_TARGET_MS:.0f} ms, "
                  f"no errors); at most {http['max_achieved_rps']} req/s achieved", file=sys.stderr, flush=True)
        intake = asyncio.run(intake_load(database_url, bootstrap, app, parties, args.commands, args.batch,
                                         insured_patients(app, parties, args.commands))) if args.commands else {}
        api.terminate()
        api.wait(10)
        api = None
        checks = check_after(database_url, bootstrap, env) if args.check else {"skipped": True}
        report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "shared": True},
                  "http_issue_to_dispense": http, "kafka_intake": intake,
                  "checks_after_load": checks,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}
        print(json.dumps(report, indent=2))
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        if app is not None:
            app.close()
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
