"""Write-side throughput: our command handlers vs eventsourcing's plain Application vs raw psycopg INSERTs.

Run by hand (not a test)::

    .venv/bin/python bench/write_side.py [--issues 1000] [--trails 200] [--batch 100]

Starts its own embedded PostgreSQL 18 (fsync on, synchronous_commit on), measures everything in the same run
and prints commands/s and ratios. Sequential, one process, one connection at a time: the per-command cost.

- ours: ``RxTrail.handle`` — load the aggregates involved (physician, encounter, prescription, trace codes),
  check the rules, hash-chain and validate the pydantic events, save in one transaction (eventsourcing's
  table lock + our command-outcome row when a command id is given); and ``apply_batch``.
- peer (a): eventsourcing's plain ``Application`` with its default ``Aggregate``/``@event`` dataclass events
  carrying the same fields (no rules, no hashing, default JSON transcoder), load + act + save per command.
- peer (b): raw psycopg INSERTs of our very rows (same topics and state bytes) into a table shaped like
  eventsourcing's: one transaction per command, and batched with ``executemany`` (one transaction per batch).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from events.base import CatalogCategory, InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from services.adapters.store import EVENTS_TABLE
from services.application import RxTrail
from services.application import commands as c
from services.application.ids import encounter_id_for
from services.application.registries import starter_commands
from services.bootstrap import build_application
from services.domain.clock import FixedClock
from services.infra.embedded import EmbeddedPostgres
from services.infra.ports import free_port
from services.infra.settings import Settings, eventsourcing_env

T0 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)
REGION = "220100"
DRUGS = ("XA10BAA001A001010101", "XC08CAA001A001010101")
SECRET = b"bench-pseudonym-secret-0123456789abcdef"


def codes(n: int) -> tuple[str, ...]:
    return tuple(f"{secrets.randbelow(10**20):020d}" for _ in range(n))


ITEMS = tuple(
    PrescriptionItem(drug_code=d, name=f"drug {i}", spec="0.5g*30", quantity=2, days_supply=28,
                     unit_price=Decimal("12.50"), category=CatalogCategory.A)
    for i, d in enumerate(DRUGS)
)


@dataclass
class Rate:
    label: str
    commands: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.commands / self.seconds


def timed(label: str, commands: int, work: Callable[[], object]) -> Rate:
    started = time.perf_counter()
    work()
    rate = Rate(label, commands, time.perf_counter() - started)
    print(f"  {label:<58} {rate.per_s:>9,.0f} commands/s  ({commands} in {rate.seconds:.2f}s)", flush=True)
    return rate


# --- ours ------------------------------------------------------------------------------------------


class Ours:
    def __init__(self, url: str) -> None:
        self.app: RxTrail = build_application(Settings(database_url=url, pseudonym_secret=SECRET), clock=FixedClock(T0))
        self.hospital, self.physician, self.pharmacist, self.pharmacy = "H-1", "DR-1", "RPH-1", "PH-1"
        for cmd in starter_commands(changed_by=f"agency:{REGION}", region=REGION, hospital=self.hospital,
                                    physicians=[self.physician], pharmacist=self.pharmacist, pharmacies=[self.pharmacy]):
            self.must(cmd)
        from tests.support.cast import consultation_fee, list_drugs

        list_drugs(self.app, REGION)  # the two drugs, with the region's caps and standards (R7, R17)
        self.fee = consultation_fee(REGION)  # the region's consultation price (R15)
        self.insured: set[str] = set()

    def insure(self, national_ids: list[str]) -> None:
        """Register the patients' insurance (R17 reads it at the visit), in one batch, outside any timing."""
        from tests.support.cast import patient_commands

        fresh = [n for n in dict.fromkeys(national_ids) if n not in self.insured]
        for start in range(0, len(fresh), 200):
            part = fresh[start:start + 200]
            if not all(o.ok for o in self.app.apply_batch([cmd for n in part for cmd in patient_commands(n, REGION)])):
                raise RuntimeError("patient registration refused")
        self.insured.update(fresh)

    def must(self, cmd: c.Command) -> Any:
        outcome = self.app.handle(cmd)
        if not outcome.ok:
            raise RuntimeError(f"{type(cmd).__name__}: {outcome.error} {outcome.rule_id} {outcome.reason}")
        return outcome

    def fresh_patients(self, n: int) -> list[str]:
        """``n`` new insured patients (a patient per trail: R4 counts a patient's running supply of a drug)."""
        first = len(self.insured)
        ids = [f"2201{first + i:014d}" for i in range(n)]
        self.insure(ids)
        return ids

    def visit(self, n: int, national_id: str | None = None) -> c.RecordFollowUpVisit:
        patient = national_id or self.fresh_patients(1)[0]
        return c.RecordFollowUpVisit(
            hospital_id=self.hospital, visit_ref=f"V-{n}-{uuid4().hex[:8]}", physical_institution_id=f"P-{self.hospital}",
            institution_ownership=Ownership.PUBLIC, pooling_region=REGION, insured_region=REGION,
            insurance_type=InsuranceType.EMPLOYEE,
            patient=c.PatientIdentity(national_id=patient, name="张三", phone="13800138000"),
            physician_id=self.physician, physician_signature="sig", diagnosis_code="E11.9",
            diagnosis_name="type 2 diabetes", original_diagnosis_code="E11.9",
            original_diagnosis_date=date(2025, 2, 10), original_institution_id=f"P-{self.hospital}",
            verification_method=RealNameMethod.E_VOUCHER, consultation_fee=self.fee,
        )

    def issue(self, encounter_id: UUID, command_id: str | None = None) -> c.IssuePrescription:
        from services.application.registries import starter_signing_key
        from services.domain.signature import sign_prescription

        ref = f"RX-{uuid4().hex}"
        signature = sign_prescription(starter_signing_key(self.physician), hospital_id=self.hospital,
                                      prescription_ref=ref, encounter_id=encounter_id, physician_id=self.physician,
                                      diagnosis_code="E11.9", items=ITEMS, justification=None,
                                      preferred_pharmacy_id=None)  # the hospital's system signs (R2)
        return c.IssuePrescription(
            hospital_id=self.hospital, prescription_ref=ref, encounter_id=encounter_id,
            physician_signature=signature, items=ITEMS, first_visit_drug_codes=DRUGS, command_id=command_id,
        )

    def encounters(self, n: int) -> list[UUID]:
        visits = [self.visit(i, patient) for i, patient in enumerate(self.fresh_patients(n))]
        for start in range(0, n, 200):
            self.app.apply_batch(visits[start:start + 200])
        return [encounter_id_for(v.hospital_id, v.visit_ref) for v in visits]

    def trail_commands(self, n: int) -> list[Callable[[], c.Command]]:
        """The 8 commands of one trail, built lazily (each needs the ids the earlier ones produced)."""
        visit = self.visit(n)
        issue = self.issue(encounter_id_for(visit.hospital_id, visit.visit_ref))
        from services.application.ids import prescription_id_for

        rx = prescription_id_for(issue.hospital_id, issue.prescription_ref)
        lines = tuple(DispensedLine(drug_code=d, quantity=2, unit_price=Decimal("12.50"),
                                    trace_codes=codes(2)) for d in DRUGS)
        return [
            lambda: visit,
            lambda: issue,
            lambda: c.ApprovePrescription(prescription_id=rx, pharmacist_id=self.pharmacist),
            lambda: c.RoutePrescription(prescription_id=rx, pharmacy_id=self.pharmacy,
                                        basis=RoutingBasis.PATIENT_CHOICE),
            lambda: c.AcceptPrescription(prescription_id=rx, dispenser_id=self.pharmacy),
            lambda: c.DispensePrescription(prescription_id=rx, dispenser_id=self.pharmacy, lines=lines),
            lambda: c.MarkCollected(prescription_id=rx, verification_method=RealNameMethod.FACE_RECOGNITION),
            lambda: c.SettlePrescription(prescription_id=rx, patient_national_id=visit.patient.national_id,
                                         verification_method=RealNameMethod.E_VOUCHER, fund="35.00",
                                         personal_account="10.00", self_pay="5.00", policy_version="2025.1",
                                         policy_region=REGION, catalog_region=REGION, settlement_ref=f"S-{n}"),
        ]


# --- peer (a): eventsourcing's plain Application ---------------------------------------------------


class EsEncounter(Aggregate):
    @event("Recorded")
    def __init__(self, hospital_id: str, patient_ref: str, patient_sealed: str, physician_id: str,
                 diagnosis_code: str, original_diagnosis_code: str, original_diagnosis_date: str,
                 consultation_fee: Decimal, pooling_region: str, insured_region: str) -> None:
        self.hospital_id = hospital_id
        self.patient_ref = patient_ref
        self.physician_id = physician_id
        self.diagnosis_code = diagnosis_code
        self.consultation_fee = consultation_fee


class EsPrescription(Aggregate):
    @event("Issued")
    def __init__(self, encounter_id: UUID, hospital_id: str, patient_ref: str, physician_id: str,
                 physician_signature: str, diagnosis_code: str, items: list[dict[str, str]],
                 valid_until: datetime, business_type: str) -> None:
        self.status = "issued"
        self.items = items
        self.dispensed: list[list[dict[str, Any]]] = []

    @event("Approved")
    def approve(self, pharmacist_id: str, business_type: str) -> None:
        self.status = "approved"

    @event("Routed")
    def route(self, dispenser_id: str, dispenser_kind: str, basis: str, business_type: str) -> None:
        self.status = "routed"

    @event("Accepted")
    def accept(self, dispenser_id: str, business_type: str) -> None:
        self.status = "accepted"

    @event("Dispensed")
    def dispense(self, dispenser_id: str, dispense_no: int, lines: list[dict[str, Any]], complete: bool,
                 business_type: str) -> None:
        self.dispensed.append(lines)
        self.status = "dispensed"

    @event("Collected")
    def collect(self, verification_method: str, business_type: str) -> None:
        self.status = "collected"

    @event("Settled")
    def settle(self, total: Decimal, fund: Decimal, personal_account: Decimal, self_pay: Decimal,
               settlement_ref: str, business_type: str) -> None:
        self.status = "settled"


class EsTraceCode(Aggregate):
    @event("Sold")
    def __init__(self, code: str, drug_code: str, seller_id: str, prescription_id: UUID, business_type: str) -> None:
        self.code = code


class EsBench(Application[UUID]):
    name = "esbench"


class Peer:
    def __init__(self, url: str) -> None:
        self.app = EsBench(env=eventsourcing_env(url))
        self.items = [i.model_dump(mode="json") for i in ITEMS]

    def record(self, n: int) -> UUID:
        enc = EsEncounter(hospital_id="H-1", patient_ref=secrets.token_hex(32), patient_sealed=secrets.token_hex(80),
                          physician_id="DR-1", diagnosis_code="E11.9", original_diagnosis_code="E11.9",
                          original_diagnosis_date="2025-02-10", consultation_fee=Decimal("20.00"),
                          pooling_region=REGION, insured_region=REGION)
        self.app.save(enc)
        return enc.id

    def issue(self, encounter_id: UUID) -> UUID:
        enc: EsEncounter = self.app.repository.get(encounter_id)
        rx = EsPrescription(encounter_id=enc.id, hospital_id=enc.hospital_id, patient_ref=enc.patient_ref,
                            physician_id=enc.physician_id, physician_signature="sig", diagnosis_code="E11.9",
                            items=self.items, valid_until=T0 + timedelta(days=3), business_type="internet")
        self.app.save(rx)
        return rx.id

    def step(self, rx_id: UUID, act: Callable[[EsPrescription], list[Aggregate]]) -> None:
        rx: EsPrescription = self.app.repository.get(rx_id)
        others = act(rx)
        self.app.save(rx, *others)

    def trail(self, n: int) -> None:
        rx_id = self.issue(self.record(n))
        bt = "internet"
        self.step(rx_id, lambda rx: rx.approve(pharmacist_id="RPH-1", business_type=bt) or [])
        self.step(rx_id, lambda rx: rx.route(dispenser_id="PH-1", dispenser_kind="pharmacy", basis="patient_choice",
                                             business_type=bt) or [])
        self.step(rx_id, lambda rx: rx.accept(dispenser_id="PH-1", business_type=bt) or [])

        def dispense(rx: EsPrescription) -> list[Aggregate]:
            scanned = {d: list(codes(2)) for d in DRUGS}
            lines = [{"drug_code": d, "quantity": 2, "unit_price": "12.50", "price_cap": "12.50",
                      "trace_codes": scanned[d]} for d in DRUGS]
            rx.dispense(dispenser_id="PH-1", dispense_no=1, lines=lines, complete=True, business_type=bt)
            return [EsTraceCode(code=code, drug_code=d, seller_id="PH-1", prescription_id=rx.id,
                                business_type=bt) for d in DRUGS for code in scanned[d]]

        self.step(rx_id, dispense)
        self.step(rx_id, lambda rx: rx.collect(verification_method="face_recognition", business_type=bt) or [])
        self.step(rx_id, lambda rx: rx.settle(total=Decimal("50.00"), fund=Decimal("35.00"),
                                              personal_account=Decimal("10.00"), self_pay=Decimal("5.00"),
                                              settlement_ref=f"S-{n}", business_type=bt) or [])


# --- peer (b): raw psycopg -------------------------------------------------------------------------

RAW_DDL = (
    "CREATE TABLE IF NOT EXISTS raw_events (originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
    "topic text, state bytea, notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
)
RAW_INSERT = "INSERT INTO raw_events (originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s)"


def our_rows(url: str, after: int, before: int) -> list[tuple[UUID, int, str, bytes]]:
    with psycopg.connect(url) as conn:
        return [
            (uuid4(), v, t, bytes(s))  # fresh ids: the same bytes, no clash with earlier raw runs
            for v, t, s in conn.execute(
                f"SELECT originator_version, topic, state FROM {EVENTS_TABLE} WHERE notification_id > %s "
                "AND notification_id <= %s ORDER BY notification_id", (after, before))
        ]


def max_notification(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}").fetchone()
    return int(row[0]) if row else 0


def fresh(groups: list[list[tuple[UUID, int, str, bytes]]]) -> list[list[tuple[UUID, int, str, bytes]]]:
    """The same rows under new aggregate ids, so each raw run inserts (no primary-key clash with the last)."""
    return [[(uuid4(), v, t, s) for _, v, t, s in group] for group in groups]


def raw_one_txn_each(url: str, groups: list[list[tuple[UUID, int, str, bytes]]]) -> None:
    with psycopg.connect(url) as conn:
        for rows in groups:
            with conn.transaction(), conn.cursor() as cur:
                for row in rows:
                    cur.execute(RAW_INSERT, row)


def raw_executemany(url: str, groups: list[list[tuple[UUID, int, str, bytes]]], batch: int) -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, len(groups), batch):
            rows = [row for group in groups[start:start + batch] for row in group]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(RAW_INSERT, rows)


# --- the run ---------------------------------------------------------------------------------------

Groups = list[list[tuple[UUID, int, str, bytes]]]


def regroup(rows: list[tuple[UUID, int, str, bytes]], sizes: list[int]) -> Groups:
    groups, at = [], 0
    for size in sizes:
        groups.append(rows[at:at + size])
        at += size
    return groups


def issue_round(url: str, ours: Ours, peer: Peer, n: int, batch: int) -> dict[str, Rate]:
    rates: dict[str, Rate] = {}
    pool = iter(ours.encounters(3 * n))
    start = max_notification(url)
    rates["ours"] = timed("ours: handle(IssuePrescription)", n,
                          lambda: [ours.must(ours.issue(next(pool))) for _ in range(n)])
    groups = [[row] for row in our_rows(url, start, max_notification(url))]
    rates["ours_key"] = timed("ours: handle(IssuePrescription) with command_id", n,
                              lambda: [ours.must(ours.issue(next(pool), command_id=uuid4().hex)) for _ in range(n)])
    cmds = [ours.issue(next(pool)) for _ in range(n)]

    def batched() -> None:
        for s in range(0, n, batch):
            if not all(o.ok for o in ours.app.apply_batch(cmds[s:s + batch])):
                raise RuntimeError("batch refused a command")

    rates["ours_batch"] = timed(f"ours: apply_batch({batch} x IssuePrescription)", n, batched)
    es_encounters = [peer.record(i) for i in range(n)]
    rates["es"] = timed("peer (a) eventsourcing Application: load encounter + create", n,
                        lambda: [peer.issue(e) for e in es_encounters])
    one_each, many = fresh(groups), fresh(groups)
    rates["raw"] = timed("peer (b) raw INSERT, one transaction each", n, lambda: raw_one_txn_each(url, one_each))
    rates["raw_many"] = timed(f"peer (b) raw executemany, {batch} commands per transaction", n,
                              lambda: raw_executemany(url, many, batch))
    return rates


def trail_round(url: str, ours: Ours, peer: Peer, trails: int, batch: int, offset: int) -> dict[str, Rate]:
    rates: dict[str, Rate] = {}
    plans = [ours.trail_commands(offset + i) for i in range(trails)]
    start = max_notification(url)
    sizes: list[int] = []

    def run_ours() -> None:
        for plan in plans:
            for make in plan:
                sizes.append(len(ours.must(make()).events))

    rates["ours"] = timed("ours: handle() x 8 per trail", trails * 8, run_ours)
    rows = our_rows(url, start, max_notification(url))
    groups = regroup(rows, sizes)
    per_batch = max(1, batch // 8)
    flat = [make() for plan in [ours.trail_commands(offset + trails + i) for i in range(trails)] for make in plan]

    def run_batched() -> None:
        for s in range(0, len(flat), per_batch * 8):
            if not all(o.ok for o in ours.app.apply_batch(flat[s:s + per_batch * 8])):
                raise RuntimeError("batch refused a command")

    rates["ours_batch"] = timed(f"ours: apply_batch({per_batch} whole trails = {per_batch * 8} commands)",
                                trails * 8, run_batched)
    def peer_trails() -> None:
        for i in range(trails):
            peer.trail(offset + i)

    rates["es"] = timed("peer (a) eventsourcing Application: load + act + save x 8", trails * 8, peer_trails)
    one_each, many = fresh(groups), fresh(groups)
    rates["raw"] = timed("peer (b) raw INSERT, one transaction per command", trails * 8,
                         lambda: raw_one_txn_each(url, one_each))
    rates["raw_many"] = timed(f"peer (b) raw executemany, {per_batch * 8} commands per transaction", trails * 8,
                              lambda: raw_executemany(url, many, per_batch * 8))
    print(f"  ({len(rows) / trails:.1f} events per trail, {sum(len(r[3]) for r in rows) / len(rows):.0f} bytes "
          "per stored event on average)")
    return rates


def median_rates(rounds: list[dict[str, Rate]]) -> dict[str, float]:
    return {key: statistics.median(r[key].per_s for r in rounds) for key in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issues", type=int, default=1000)
    parser.add_argument("--trails", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="rxtrail-bench-", dir="/var/tmp"))
    server = EmbeddedPostgres(data_dir, free_port())
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RAW_DDL)
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'} (embedded, fsync on); {args.rounds} rounds, "
              f"median reported\n")
        ours, peer = Ours(url), Peer(url)
        for e in ours.encounters(50):  # warm up both sides: connections, prepared statements
            ours.must(ours.issue(e))
        for i in range(50):
            peer.issue(peer.record(i))
        issue_rounds, trail_rounds = [], []
        for r in range(args.rounds):
            print(f"round {r + 1}: issue prescription (1 event; reads encounter + physician)")
            issue_rounds.append(issue_round(url, ours, peer, args.issues, args.batch))
            print(f"round {r + 1}: full trail (visit, issue, approve, route, accept, dispense 4 codes, collect, "
                  "settle)")
            trail_rounds.append(trail_round(url, ours, peer, args.trails, args.batch, r * 2 * args.trails))
        issue, trail = median_rates(issue_rounds), median_rates(trail_rounds)

        print("\nmedian commands/s                      ours   ours(batch)  eventsourcing   raw/txn  raw/executemany")
        print(f"  issue prescription              {issue['ours']:>8,.0f} {issue['ours_batch']:>12,.0f} "
              f"{issue['es']:>14,.0f} {issue['raw']:>9,.0f} {issue['raw_many']:>16,.0f}")
        print(f"  full trail (per command)        {trail['ours']:>8,.0f} {trail['ours_batch']:>12,.0f} "
              f"{trail['es']:>14,.0f} {trail['raw']:>9,.0f} {trail['raw_many']:>16,.0f}")
        print(f"  issue with command_id           {issue['ours_key']:>8,.0f}")
        print("\nratios")
        for name, m in (("issue", issue), ("trail", trail)):
            print(f"  {name}: ours/eventsourcing {m['ours'] / m['es']:.2f}x, ours/raw-txn {m['ours'] / m['raw']:.2f}x, "
                  f"ours-batch/eventsourcing {m['ours_batch'] / m['es']:.2f}x, "
                  f"ours-batch/raw-executemany {m['ours_batch'] / m['raw_many']:.2f}x")
        print(f"  command_id (idempotency) cost on issue: {issue['ours_key'] / issue['ours']:.2f}x")
        ours.app.close()
        peer.app.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
