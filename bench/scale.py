"""The whole pipeline at a size: write → relay → rebuild every projection → query (run by hand or tiny in CI).

    .venv/bin/python bench/scale.py --events 200000          # about 12,500 trails
    .venv/bin/python bench/scale.py --events 30000,120000    # two sizes: is each stage's memory flat?
    .venv/bin/python bench/scale.py --events 2000 --tiny     # CI: well under a minute

Starts its own embedded PostgreSQL and Tansu, then runs each stage in its own process (so each stage's peak RSS
is its own, read with ``wait4``) and prints one JSON report:

1. ``generate``: realistic trails of the tests' one cast (``tests.support.cast.Cast``: registered parties, a registered
   patient per trail, signed prescriptions; patient insurance → visit → issue → approve → route → accept → dispense
   with scanned trace codes → collect → settle) through the write side's batch entry point
   ``RxTrail.apply_batch``, a wave of ``--wave`` trails at a time (9 batches a wave), until ``--events`` events
   are stored. Every command must be accepted.
2. ``relay``: the relay publishes the whole store to ``rx.events`` (from notification 0) and stops at the end.
3. ``replay <projection>``: each projection rebuilt alone from Kafka (``services.replay``, the path
   ``rxtrail replay NAME`` takes), then ``replay all``: the three at once in one pass — the "full replay" wall time.
4. ``query``: trail / by-trace-code / by-patient on the traceability projection at that size, p50/p99 over
   ``--queries`` random keys each.

Then PostgreSQL's table and index sizes. Memory: no stage holds the log — generate keeps one wave, the relay and the
replay one batch (and the consumer's bounded prefetch); the report's RSS per stage is the check. With several sizes
(``--events 30000,120000``) the store grows from one size to the next, each larger size is relayed from 0 by a
relay of its own to a topic of its own (``rx.events.<size>``, replayed from there), and the report ends with (also
on stderr) a "memory flat?" line: each stage's peak RSS at the smallest and the largest size, its growth per
100 k events (flat: at most 10 % more), and the extrapolation to 10 M events of each stage's time (at the largest
size's events/s) and of the storage (bytes per event between the sizes). ``RXTRAIL_SCALE_TRACE=1`` makes each
stage report what its heap holds (``MemoryWatch``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "scale-pseudonym-secret-0123456789abcdef"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def stored_events(url: str) -> int:
    import psycopg

    from services.adapters.event_log import count_events, discover_logs

    with psycopg.connect(url, autocommit=True) as conn:
        return sum(count_events(conn, log) for log in discover_logs(conn))


# --- stages (each runs in its own process: ``scale.py --stage NAME``) -----------------------------------------------


def stage_generate(url: str, events: int, wave: int) -> dict[str, Any]:
    """Trails of the one test cast (``tests.support.cast.Cast``: the registries, signed prescriptions, a registered
    patient per trail), a wave at a time, every step of a wave in one ``apply_batch``."""
    from datetime import UTC, datetime

    from events.base import RealNameMethod
    from events.prescription import RoutingBasis
    from services.application import commands as c
    from services.application.ids import encounter_id_for, prescription_id_for
    from services.bootstrap import build_application
    from services.domain.clock import FixedClock
    from services.infra.settings import Settings
    from tests.support.cast import Cast, new_national_id, patient_commands
    from tests.support.domain import line

    app = build_application(Settings(database_url=url, pseudonym_secret=SECRET),
                            clock=FixedClock(datetime(2025, 3, 10, 2, 0, tzinfo=UTC)))
    cast = Cast(app).register()
    started = time.perf_counter()
    commands = trails = rejected = written = 0

    def run(batch: list[c.Command]) -> None:
        nonlocal commands, rejected, written
        for outcome in app.apply_batch(batch):
            written += len(outcome.events)  # counted from the outcomes (a count(*) per wave grows with the log)
            if not outcome.ok:
                rejected += 1
                if rejected <= 3:
                    print(f"rejected: {outcome.command_type} {outcome.error} {outcome.rule_id} {outcome.reason}",
                          file=sys.stderr)
        commands += len(batch)

    while written < events:
        patients = [new_national_id(cast.region) for _ in range(wave)]
        run([cmd for nid in patients for cmd in patient_commands(nid, cast.region)])
        cast.insured |= set(patients)
        visits = [cast.visit(patient=c.PatientIdentity(national_id=nid, name="张三", phone="13800138000"))
                  for nid in patients]
        run(list(visits))
        issues = [cast.issue(encounter_id_for(v.hospital_id, v.visit_ref)) for v in visits]
        run(list(issues))
        rxs = [prescription_id_for(i.hospital_id, i.prescription_ref) for i in issues]
        run([c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist) for rx in rxs])
        run([c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
             for rx in rxs])
        run([c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.pharmacy) for rx in rxs])
        run([c.DispensePrescription(prescription_id=rx, dispenser_id=cast.pharmacy, lines=(line(codes=4),))
             for rx in rxs])
        run([c.MarkCollected(prescription_id=rx, verification_method=RealNameMethod.FACE_RECOGNITION) for rx in rxs])
        run([c.SettlePrescription.model_validate({
            "prescription_id": rx, "patient_national_id": nid, "verification_method": RealNameMethod.E_VOUCHER,
            "fund": "35.00", "personal_account": "10.00", "self_pay": "5.00", "delivery_fee": "0.00",
            "policy_version": "2025.1", "policy_region": cast.region, "catalog_region": cast.region,
            "settlement_ref": f"S-{trails + n}"}) for n, (rx, nid) in enumerate(zip(rxs, patients, strict=True))])
        trails += wave
        if rejected:  # refused commands write nothing: stop rather than generate forever
            break
    seconds = time.perf_counter() - started
    app.close()
    if rejected:
        raise SystemExit(f"{rejected} commands were refused: the trails are not realistic any more")
    return {"trails": trails, "commands": commands, "events": written, "seconds": round(seconds, 2),
            "events_per_s": round(written / seconds), "commands_per_s": round(commands / seconds)}


def stage_relay(url: str, bootstrap: str, topic: str, name: str) -> dict[str, Any]:
    from services.relay.core import RelayConfig, RelayStats, run_relay

    total = stored_events(url)
    stats = RelayStats()

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(run_relay(RelayConfig(database_url=url, bootstrap=bootstrap, batch_size=2000,
                                                         topic=topic, name=name),
                                             stop, stats))
        started = time.perf_counter()
        while stats.published < total:
            if task.done():
                task.result()
                raise SystemExit("the relay stopped early")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        stop.set()
        await task
        return seconds

    seconds = asyncio.run(main())
    return {"events": stats.published, "seconds": round(seconds, 2), "events_per_s": round(stats.published / seconds)}


def stage_replay(url: str, bootstrap: str, name: str, topic: str) -> dict[str, Any]:
    from services.replay import replay

    total = stored_events(url)
    started = time.perf_counter()
    results = replay(name, url, bootstrap, progress=False, topic=topic)
    seconds = time.perf_counter() - started
    if any(r.read != total for r in results):
        raise SystemExit(f"replay read {[r.read for r in results]} events, the store holds {total}")
    return {"projections": [r.projection for r in results], "events": total, "seconds": round(seconds, 2),
            "events_per_s": round(total / seconds)}


def stage_query(url: str, queries: int) -> dict[str, Any]:
    import psycopg

    from projections.traceability import queries as q

    rng = random.Random(5)
    schema = "traceability"
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        def sample(sql: str) -> list[Any]:
            return [r[0] for r in conn.execute(sql, (queries,)).fetchall()]

        keys = {
            "trail": (sample(f"SELECT prescription_id FROM {schema}.prescriptions ORDER BY random() LIMIT %s"),
                      lambda k: q.trail(conn, schema, k)),
            "by_trace_code": (sample(f"SELECT code FROM {schema}.trace_code_uses ORDER BY random() LIMIT %s"),
                              lambda k: q.by_trace_code(conn, schema, k)),
            "by_patient": (sample(f"SELECT patient_ref FROM {schema}.prescriptions ORDER BY random() LIMIT %s"),
                           lambda k: q.by_patient(conn, schema, k)),
        }
        for name, (found, run) in keys.items():
            if not found:
                raise SystemExit(f"{name}: the projection is empty")
            for key in found[:20]:  # warm the plan cache and the buffers a little
                run(key)
            rng.shuffle(found)
            took: list[float] = []
            for key in found:
                t0 = time.perf_counter()
                rows = run(key)
                took.append((time.perf_counter() - t0) * 1000)
                if not rows:
                    raise SystemExit(f"{name}({key}) found nothing")
            out[name] = {"n": len(took), "p50_ms": round(statistics.median(took), 3), "p99_ms": round(pct(took, 0.99), 3)}
    return out


def sizes(url: str) -> list[dict[str, Any]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # reltuples: row counts without counting
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples::bigint "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND pg_total_relation_size(c.oid) > 65536 "
            "ORDER BY pg_total_relation_size(c.oid) DESC").fetchall()
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    out = [{"table": t, "table_mb": round(d / 2**20, 1), "indexes_mb": round(i / 2**20, 1), "rows": n}
           for t, d, i, n in rows]
    out.append({"table": "(database)", "table_mb": round((total[0] if total else 0) / 2**20, 1)})
    return out


# --- the orchestration ------------------------------------------------------------------------------------------


def run_stage(env: dict[str, str], *args: str) -> dict[str, Any]:
    """One stage in its own process; its JSON result plus its peak RSS (wait4's ru_maxrss, KiB on Linux)."""
    proc = subprocess.Popen([sys.executable, __file__, "--stage", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage {' '.join(args)} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])  # its last line; logs may precede
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def drop_topic(bootstrap: str, topic: str) -> None:
    """A size's topic, once its stages are done (the embedded Tansu keeps every record in memory)."""
    from services.infra.kafka_admin import delete_topics_async

    asyncio.run(delete_topics_async(bootstrap, [topic]))


def one_size(env: dict[str, str], url: str, bootstrap: str, args: argparse.Namespace, events: int, topic: str,
             relay: str) -> dict[str, Any]:
    """Every stage at one size; the store grows from the previous size (generate adds what is missing), and a
    relay of its own (``relay``) publishes the whole store to a topic of its own (``topic``) from 0."""
    from projections.registry import NAMES

    started = time.perf_counter()
    stages: dict[str, Any] = {}
    stages["generate"] = run_stage(env, "generate", url, str(max(1, events - stored_events(url))), str(args.wave))
    stages["relay"] = run_stage(env, "relay", url, bootstrap, topic, relay)
    if not args.tiny:
        for name in NAMES:
            stages[f"replay {name}"] = run_stage(env, "replay", url, bootstrap, name, topic)
    stages["replay all (full replay)"] = run_stage(env, "replay", url, bootstrap, "all", topic)
    stages["query"] = run_stage(env, "query", url, str(args.queries))
    queries = {k: v for k, v in stages["query"].items() if k != "peak_rss_mb"}
    return {"events": stored_events(url), "stages": stages, "queries": queries, "sizes": sizes(url),
            "wall_s": round(time.perf_counter() - started, 1)}


TARGET = 10_000_000
"""The issue's size: 10 M events replayed in 5 minutes."""
FLAT = 1.10
"""A stage's peak RSS is "flat" when the larger size's is at most 10 % above the smaller size's (RSS moves a few
MB between identical runs; a stage holding anything per event grows with the size)."""


def memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS per stage at the smallest and the largest size: the growth per 100 k events and the verdict."""
    small, large = runs[0], runs[-1]
    span = large["events"] - small["events"]
    per_stage: dict[str, Any] = {}
    for stage, result in large["stages"].items():
        before, after = small["stages"][stage]["peak_rss_mb"], result["peak_rss_mb"]
        growth = (after - before) / span * 100_000 if span > 0 else 0.0
        per_stage[stage] = {"rss_mb": [before, after], "growth_mb_per_100k_events": round(growth, 1),
                            "at_10M_mb": round(after + max(growth, 0.0) * (TARGET - large["events"]) / 100_000)
                            if span > 0 else None, "flat": span > 0 and after <= before * FLAT}
    flat = span > 0 and all(v["flat"] for v in per_stage.values())
    grown = [f"{k} {v['rss_mb'][0]:.0f}→{v['rss_mb'][1]:.0f} MB" for k, v in per_stage.items() if not v["flat"]]
    line = (f"memory flat? {'YES' if flat else 'NO'}: peak RSS per stage from {small['events']:,} to "
            f"{large['events']:,} events: " + "; ".join(
                f"{k} {v['rss_mb'][0]:.0f}→{v['rss_mb'][1]:.0f} MB ({v['growth_mb_per_100k_events']:+.1f}/100k)"
                for k, v in per_stage.items())
            + (f" — grew more than {FLAT - 1:.0%}: {', '.join(grown)}" if grown else "")) if span > 0 else (
        "memory flat? (one size: give two, e.g. --events 30000,120000)")
    return {"flat": flat, "line": line, "stages": per_stage}


def extrapolate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Time and storage at 10 M events: each stage at its events/s of the largest size (every stage is linear in
    the count), storage by the bytes per event between the two sizes (the schema's fixed part aside)."""
    small, large = runs[0], runs[-1]
    seconds = {k: round(TARGET / v["events_per_s"]) for k, v in large["stages"].items() if v.get("events_per_s")}
    db = {r["table"]: r for r in large["sizes"]}
    db0 = {r["table"]: r for r in small["sizes"]}
    span = large["events"] - small["events"]

    def per_event(table: str) -> float:
        size = db[table]["table_mb"] + db[table].get("indexes_mb", 0.0)
        if span > 0 and table in db0:
            return (size - db0[table]["table_mb"] - db0[table].get("indexes_mb", 0.0)) * 2**20 / span
        return size * 2**20 / large["events"]

    storage = {t: round(per_event(t) * TARGET / 2**30, 1) for t in ("public.rxtrail_events", "(database)") if t in db}
    full = seconds.get("replay all (full replay)")
    line = (f"at 10 M events (from {large['events']:,}, linear): generate {seconds.get('generate', 0) / 3600:.1f} h, "
            f"relay {seconds.get('relay', 0) / 60:.0f} min, full replay {(full or 0) / 60:.0f} min (target 5 min: "
            f"{'met' if full is not None and full <= 300 else 'NOT met'}); event table + indexes "
            f"{storage.get('public.rxtrail_events', float('nan'))} GB, database {storage.get('(database)', float('nan'))} GB")
    return {"seconds": seconds, "storage_gb": storage, "line": line}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    from events import topics
    from services.infra.embedded import EmbeddedPostgres, Tansu
    from services.infra.ports import free_port

    counts = sorted({int(n) for n in str(args.events).split(",") if n.strip()})
    work = Path(tempfile.mkdtemp(prefix="rxtrail-scale-", dir="/var/tmp"))
    pg = EmbeddedPostgres(work / "pg", free_port())
    url = pg.start()
    broker = Tansu(work / "tansu", free_port())
    bootstrap = broker.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RXTRAIL_LOG_LEVEL": "WARNING"}
    try:
        wall = time.perf_counter()
        runs: list[dict[str, Any]] = []
        topic = topics.EVENTS
        for n, events in enumerate(counts):
            if n:  # the first size on rx.events itself; each larger one on rx.events.<size>, relayed from 0
                drop_topic(bootstrap, topic)
            topic, relay = (topics.EVENTS, "relay") if n == 0 else (f"{topics.EVENTS}.{events}", f"scale-{events}")
            runs.append(one_size(env, url, bootstrap, args, events, topic, relay))
        mem, ten = memory(runs), extrapolate(runs)
        print(mem["line"], file=sys.stderr)
        print(ten["line"], file=sys.stderr)
        machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "shared": True}
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if len(runs) == 1:  # one size: the report as before, plus the extrapolation
            return {**runs[0], "memory": mem, "extrapolation_10M": ten,
                    "wall_s": round(time.perf_counter() - wall, 1), "machine": machine, "at": at}
        return {"runs": runs, "memory": mem, "extrapolation_10M": ten,
                "wall_s": round(time.perf_counter() - wall, 1), "machine": machine, "at": at}
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)  # the data of a 300 k run is most of a gigabyte


class MemoryWatch:
    """``RXTRAIL_SCALE_TRACE=1`` (investigation only: tracemalloc slows a stage 2–5×) samples the stage's RSS and
    the Python heap tracemalloc sees every ``RXTRAIL_SCALE_TRACE_EVERY`` seconds (2), snapshots the heap once warm
    (after ``RXTRAIL_SCALE_TRACE_WARM`` s, 10), at its largest sample and at the end, and prints to stderr the
    RSS/heap series, the allocation sites (by line) that grew most since warm, and the top sites at the largest
    heap: what a stage holds, and what of it grows with the events it handled. ``RXTRAIL_SCALE_TRACE=rss``: the RSS
    series only, at full speed."""

    def __init__(self) -> None:
        import threading
        import tracemalloc

        self.every = float(os.environ.get("RXTRAIL_SCALE_TRACE_EVERY", "2"))
        self.warm = float(os.environ.get("RXTRAIL_SCALE_TRACE_WARM", "10"))
        self.frames = int(os.environ.get("RXTRAIL_SCALE_TRACE_FRAMES", "1"))
        self.heap = os.environ.get("RXTRAIL_SCALE_TRACE") != "rss"  # "rss": the RSS series only, no tracemalloc
        if self.heap:
            tracemalloc.start(self.frames)
        self.started = time.monotonic()
        self.series: list[tuple[float, float, float]] = []
        self.first: Any = None
        self.top: Any = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self.thread.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _sample(self) -> None:
        import tracemalloc

        heap = tracemalloc.get_traced_memory()[0] / 2**20 if self.heap else float("nan")
        self.series.append((time.monotonic() - self.started, self.rss_mb(), heap))

    def _run(self) -> None:
        import tracemalloc

        top = 0.0
        while not self.done.wait(self.every):
            self._sample()
            if self.heap and self.first is None and time.monotonic() - self.started >= self.warm:
                self.first = tracemalloc.take_snapshot()
            if self.heap and self.series[-1][2] > top:  # the heap at its largest sample: what makes the peak
                top = self.series[-1][2]
                self.top = tracemalloc.take_snapshot()

    def report(self) -> None:
        import tracemalloc

        self.done.set()
        self.thread.join()
        self._sample()
        out = sys.stderr
        if not self.heap:
            print("memory-watch: t s / RSS MB: " + " ".join(f"{t:.0f}/{r:.0f}" for t, r, _ in self.series), file=out)
            return
        last = tracemalloc.take_snapshot()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        print("memory-watch: t s / RSS MB / traced MB: " + " ".join(
            f"{t:.0f}/{r:.0f}/{h:.1f}" for t, r, h in self.series), file=out)
        print(f"memory-watch: traced peak {peak:.1f} MB; maxrss {self.rss_mb():.0f} MB now", file=out)
        keep = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        last = last.filter_traces(keep)
        stats: list[Any]
        if self.first is None:
            stats = last.statistics("lineno")[:25]
            print("memory-watch: (stage shorter than the warm-up) top sites at the end:", file=out)
        else:
            stats = last.compare_to(self.first.filter_traces(keep), "lineno")[:25]
            print(f"memory-watch: growth by line since {self.warm:.0f} s:", file=out)
        for stat in stats:
            print(f"  {stat}", file=out)
        if self.top is not None:
            print("memory-watch: top sites at the largest heap sample:", file=out)
            for stat in self.top.filter_traces(keep).statistics("lineno")[:15]:
                print(f"  {stat}", file=out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="200000",
                        help="events to generate (at least; whole waves); several sizes comma-separated "
                             "(30000,120000): the store grows from one to the next, every stage runs at each, and "
                             "the report compares each stage's peak RSS between the smallest and the largest")
    parser.add_argument("--wave", type=int, default=250, help="trails per wave (one apply_batch per step)")
    parser.add_argument("--queries", type=int, default=300, help="random keys per query kind")
    parser.add_argument("--tiny", action="store_true", help="CI: skip the per-projection replays")
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import logging

    from services.infra.runtime import configure_logging

    configure_logging(logging.WARNING)
    if args.stage:
        name, *rest = args.stage
        watch = MemoryWatch() if os.environ.get("RXTRAIL_SCALE_TRACE") else None
        match name:
            case "generate":
                result = stage_generate(rest[0], int(rest[1]), int(rest[2]))
            case "relay":
                result = stage_relay(rest[0], rest[1], rest[2], rest[3])
            case "replay":
                result = stage_replay(rest[0], rest[1], rest[2], rest[3])
            case "query":
                result = stage_query(rest[0], int(rest[1]))
            case _:
                raise SystemExit(f"unknown stage {name}")
        if watch is not None:
            watch.report()
        print(json.dumps(result))
        return 0
    print(json.dumps(orchestrate(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
