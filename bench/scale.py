"""The whole pipeline at a size: write → relay → rebuild every projection → query (run by hand or tiny in CI).

    .venv/bin/python bench/scale.py --events 200000          # about 25,000 trails
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
replay one batch; the report's RSS per stage is the check (compare two sizes: it should not grow with --events).
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


def stage_relay(url: str, bootstrap: str) -> dict[str, Any]:
    from services.relay.core import RelayConfig, RelayStats, run_relay

    total = stored_events(url)
    stats = RelayStats()

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(run_relay(RelayConfig(database_url=url, bootstrap=bootstrap, batch_size=2000),
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


def stage_replay(url: str, bootstrap: str, name: str) -> dict[str, Any]:
    from services.replay import replay

    total = stored_events(url)
    started = time.perf_counter()
    results = replay(name, url, bootstrap, progress=False)
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


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    from projections.registry import NAMES
    from services.infra.embedded import EmbeddedPostgres, Tansu
    from services.infra.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="rxtrail-scale-", dir="/var/tmp"))
    pg = EmbeddedPostgres(work / "pg", free_port())
    url = pg.start()
    broker = Tansu(work / "tansu", free_port())
    bootstrap = broker.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RXTRAIL_LOG_LEVEL": "WARNING"}
    try:
        wall = time.perf_counter()
        stages: dict[str, Any] = {}
        stages["generate"] = run_stage(env, "generate", url, str(args.events), str(args.wave))
        stages["relay"] = run_stage(env, "relay", url, bootstrap)
        if not args.tiny:
            for name in NAMES:
                stages[f"replay {name}"] = run_stage(env, "replay", url, bootstrap, name)
        stages["replay all (full replay)"] = run_stage(env, "replay", url, bootstrap, "all")
        queries = run_stage(env, "query", url, str(args.queries))
        return {
            "events": stored_events(url), "stages": stages, "queries": queries, "sizes": sizes(url),
            "wall_s": round(time.perf_counter() - wall, 1),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "shared": True},
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)  # the data of a 300 k run is most of a gigabyte


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to generate (at least; whole waves)")
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
        match name:
            case "generate":
                result = stage_generate(rest[0], int(rest[1]), int(rest[2]))
            case "relay":
                result = stage_relay(rest[0], rest[1])
            case "replay":
                result = stage_replay(rest[0], rest[1], rest[2])
            case "query":
                result = stage_query(rest[0], int(rest[1]))
            case _:
                raise SystemExit(f"unknown stage {name}")
        print(json.dumps(result))
        return 0
    print(json.dumps(orchestrate(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
