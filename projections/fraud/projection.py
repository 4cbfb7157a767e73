"""Fraud analytics: patterns that hide *between* trails, each a finding with a severity, its pattern (and rule) id,
the parties, one sentence of explanation and links to the events that prove it.

Patterns (``PATTERNS``):
- ``FR-TC-REPEAT`` (R8): a trace code someone tried to sell again after its sale (every refused attempt is a
  ``RuleFlagged`` R8 on the prescription that attempted it);
- ``FR-TC-DUPSALE`` (R8): a trace code sold twice with no return in between (must never happen: critical);
- ``FR-DOCTOR-SHOP``: one patient holding overlapping supplies of the same generic from different physicians
  (overlap of at least ``Thresholds.overlap_days``); honest repeats by the same physician never count;
- ``FR-SUSPENDED-ACTIVE``: events by a physician, pharmacist, pharmacy, institution or delivery enterprise after
  its suspension (and before a reinstatement) on the registry;
- ``FR-R5-RATE`` / ``FR-R7-RATE``: a physician whose prescriptions are flagged R5 at a high rate; a dispenser
  selling above the cap (R7) at a high rate; ``FR-AT-CAP``: a dispenser pricing (nearly) every line exactly at the cap;
- ``FR-VOLUME``: a party's daily volume far above its own history (median + k·MAD of the previous days);
- ``FR-ADDRESS``: deliveries of many patients' drugs to one address (its keyed pseudonym ``address_ref``).

How it stays replayable: the events are kept as small fact tables; after each batch every finding whose inputs
changed (its *subject*: a code, a patient, an actor, a party, an address) is computed again from the facts and
upserted, and findings of that subject that no longer hold are deleted. A finding is therefore a function of the
set of events applied, not of their arrival order or batch boundaries: a replay (or an as-of replay) gives the
same rows. Finding ids are derived from pattern and subject (``FR-DOCTOR-SHOP-<12 hex>``), so they are stable.

Patients appear only as their keyed pseudonym (``patient_ref``); addresses only as ``address_ref``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.encounter import FollowUpVisitRecorded
from events.prescription import (
    DeliveryArranged,
    DispenseWithdrawn,
    PrescriptionAccepted,
    PrescriptionApproved,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionRejected,
    PrescriptionRouted,
    RuleFlagged,
)
from events.trace_code import TraceCodeReturned, TraceCodeSold
from projections.base import Delivered, event_types

TC_REPEAT = "FR-TC-REPEAT"
TC_DUPSALE = "FR-TC-DUPSALE"
DOCTOR_SHOP = "FR-DOCTOR-SHOP"
SUSPENDED_ACTIVE = "FR-SUSPENDED-ACTIVE"
R5_RATE = "FR-R5-RATE"
R7_RATE = "FR-R7-RATE"
AT_CAP = "FR-AT-CAP"
VOLUME = "FR-VOLUME"
ADDRESS = "FR-ADDRESS"

PATTERNS: dict[str, str] = {
    TC_REPEAT: "a trace code tried again after its sale (R8 refusals)",
    TC_DUPSALE: "a trace code sold twice without a return in between",
    DOCTOR_SHOP: "overlapping supply of the same generic for one patient from different physicians",
    SUSPENDED_ACTIVE: "a suspended physician, pharmacist, pharmacy, institution or enterprise still active",
    R5_RATE: "a physician's follow-up prescriptions flagged R5 at a high rate",
    R7_RATE: "a dispenser selling above the price cap (R7) at a high rate",
    AT_CAP: "a dispenser pricing nearly every line exactly at the price cap",
    VOLUME: "a party's daily volume far above its own history (median + k·MAD)",
    ADDRESS: "many patients' drugs delivered to one address",
}


def _rule(number: int) -> str:
    """A rule id of the catalogue (``services/domain/rules.py``) by its number: projections import only ``events/``,
    so they cannot import the catalogue's constants; ``tests/unit/test_fraud_patterns.py`` checks each one against
    the catalogue."""
    return f"R{number}"


R5, R7, R8 = _rule(5), _rule(7), _rule(8)
RULE_OF: dict[str, str] = {TC_REPEAT: R8, TC_DUPSALE: R8, R5_RATE: R5, R7_RATE: R7, AT_CAP: R7}
SEVERITIES = ("low", "medium", "high", "critical")
EVIDENCE_MAX = 200
"""At most this many event links per finding (the newest are kept; the explanation states the full count)."""

CHINA = timedelta(hours=8)


@dataclass(frozen=True)
class Thresholds:
    """The numbers the patterns use (every finding's explanation names the ones that applied)."""

    overlap_days: int = 3
    rate_min_count: int = 5
    r5_rate: float = 0.5
    r7_rate: float = 0.2
    at_cap_min_lines: int = 20
    at_cap_share: float = 0.9
    volume_window_days: int = 28
    volume_min_history_days: int = 7
    volume_k: float = 5.0
    volume_min_count: int = 5
    address_patients: int = 5


def china_day(at: datetime) -> date:
    """The calendar day in China time (UTC+8) of an aware timestamp."""
    return (at.astimezone(UTC) + CHINA).date()


def finding_id(pattern: str, subject: str) -> str:
    return f"{pattern}-{hashlib.sha256(f'{pattern}|{subject}'.encode()).hexdigest()[:12]}"


@dataclass
class Finding:
    pattern: str
    subject: str
    severity: str
    parties: list[str]
    explanation: str
    evidence: list[dict[str, Any]]
    patient_ref: str | None = None
    prescription_ids: list[UUID] | None = None

    @property
    def id(self) -> str:
        return finding_id(self.pattern, self.subject)


def _link(event_id: str, aggregate_id: Any, version: int, event_type: str, at: datetime) -> dict[str, Any]:
    return {"event_id": event_id, "aggregate_id": str(aggregate_id), "version": int(version),
            "event_type": event_type, "at": at.isoformat()}


def _short(ref: str | None) -> str:
    return (ref or "?")[:12]


_REGISTRY_KINDS = (("DeliveryEnterprise", "delivery_enterprise", "enterprise_id"),
                   ("Physician", "physician", "physician_id"), ("Pharmacist", "pharmacist", "pharmacist_id"),
                   ("Pharmacy", "pharmacy", "pharmacy_id"), ("Institution", "institution", "institution_id"))
_SUSPEND = re.compile(r"(Suspended|Revoked|AgreementEnded|Deregistered)$")
_LIFT = re.compile(r"(Reinstated|Restored|Resumed|AgreementRestored)$")


def _has(cls: type, name: str) -> bool:
    fields = getattr(cls, "model_fields", {})
    return name in fields or hasattr(cls, name)


def _registry_kind(event_type: str) -> tuple[str, str] | None:
    for prefix, kind, attr in _REGISTRY_KINDS:
        if event_type.startswith(prefix):
            return kind, attr
    return None


class Fraud:
    """The fraud analytics projection (schema ``fraud``)."""

    name = "fraud"
    reads = event_types(PrescriptionIssued, FollowUpVisitRecorded, PrescriptionApproved, PrescriptionRejected,
                        PrescriptionRouted, PrescriptionAccepted, PrescriptionDispensed, DispenseWithdrawn, RuleFlagged,
                        DeliveryArranged, TraceCodeSold, TraceCodeReturned,
                        also=lambda name, cls: _registry_kind(name) is not None
                        or (_has(cls, "generic_code") and _has(cls, "drug_code")))
    """The types ``apply`` matches, and the registry events ``_registry`` reads (by name and by field)."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.t = thresholds or Thresholds()

    # --- tables ----------------------------------------------------------------------------------------------

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        for ddl in (
            ("CREATE TABLE IF NOT EXISTS {s}.rx (prescription_id uuid PRIMARY KEY, patient_ref text NOT NULL,"
             " physician_id text NOT NULL, hospital_id text NOT NULL, physical_institution_id text NOT NULL,"
             " dispenser_id text, items jsonb NOT NULL, issued_at timestamptz NOT NULL, day date NOT NULL,"
             " version int NOT NULL, event_id text NOT NULL)"),
            "CREATE INDEX IF NOT EXISTS rx_patient ON {s}.rx (patient_ref, day)",
            "CREATE INDEX IF NOT EXISTS rx_physician ON {s}.rx (physician_id, day)",
            ("CREATE TABLE IF NOT EXISTS {s}.lines (prescription_id uuid, dispense_no int, line_no int,"
             " dispenser_id text NOT NULL, drug_code text NOT NULL, quantity int NOT NULL,"
             " unit_price numeric(16,2) NOT NULL, price_cap numeric(16,2), at timestamptz NOT NULL,"
             " day date NOT NULL, version int NOT NULL, event_id text NOT NULL, withdrawn boolean NOT NULL DEFAULT false,"
             " PRIMARY KEY (prescription_id, dispense_no, line_no))"),
            "CREATE INDEX IF NOT EXISTS lines_dispenser ON {s}.lines (dispenser_id, day)",
            "CREATE INDEX IF NOT EXISTS lines_drug ON {s}.lines (drug_code)",
            ("CREATE TABLE IF NOT EXISTS {s}.flags (prescription_id uuid, version int, rule_id text NOT NULL,"
             " trace_code text, at timestamptz NOT NULL, event_id text NOT NULL, PRIMARY KEY (prescription_id, version))"),
            "CREATE INDEX IF NOT EXISTS flags_code ON {s}.flags (trace_code) WHERE trace_code IS NOT NULL",
            ("CREATE TABLE IF NOT EXISTS {s}.code_events (stream_id uuid, version int, code text NOT NULL,"
             " event_type text NOT NULL, seller_id text, prescription_id uuid, at timestamptz NOT NULL,"
             " event_id text NOT NULL, PRIMARY KEY (stream_id, version))"),
            "CREATE INDEX IF NOT EXISTS code_events_code ON {s}.code_events (code)",
            ("CREATE TABLE IF NOT EXISTS {s}.actors (aggregate_id uuid PRIMARY KEY, kind text NOT NULL,"
             " actor_id text NOT NULL)"),
            ("CREATE TABLE IF NOT EXISTS {s}.registry_changes (aggregate_id uuid, version int, change text NOT NULL,"
             " event_type text NOT NULL, at timestamptz NOT NULL, event_id text NOT NULL, effective_at timestamptz,"
             " PRIMARY KEY (aggregate_id, version))"),
            ("CREATE TABLE IF NOT EXISTS {s}.activity (actor_id text, aggregate_id uuid, version int,"
             " event_type text NOT NULL, at timestamptz NOT NULL, event_id text NOT NULL,"
             " PRIMARY KEY (actor_id, aggregate_id, version))"),
            "CREATE TABLE IF NOT EXISTS {s}.drugs (drug_code text PRIMARY KEY, generic_code text NOT NULL)",
            ("CREATE TABLE IF NOT EXISTS {s}.deliveries (prescription_id uuid, version int, address_ref text NOT NULL,"
             " at timestamptz NOT NULL, event_id text NOT NULL, PRIMARY KEY (prescription_id, version))"),
            "CREATE INDEX IF NOT EXISTS deliveries_address ON {s}.deliveries (address_ref)",
            ("CREATE TABLE IF NOT EXISTS {s}.findings (finding_id text PRIMARY KEY, pattern text NOT NULL,"
             " rule_id text, severity text NOT NULL, subject text NOT NULL, parties text[] NOT NULL,"
             " patient_ref text, prescription_ids uuid[] NOT NULL, explanation text NOT NULL,"
             " first_at timestamptz NOT NULL, last_at timestamptz NOT NULL, evidence jsonb NOT NULL,"
             " seq bigint GENERATED BY DEFAULT AS IDENTITY)"),
            "CREATE UNIQUE INDEX IF NOT EXISTS findings_seq ON {s}.findings (seq)",
            "CREATE INDEX IF NOT EXISTS findings_subject ON {s}.findings (pattern, subject)",
            "CREATE INDEX IF NOT EXISTS findings_parties ON {s}.findings USING gin (parties)",
            "CREATE INDEX IF NOT EXISTS findings_patient ON {s}.findings (patient_ref, seq)",
            "CREATE INDEX IF NOT EXISTS findings_prescriptions ON {s}.findings USING gin (prescription_ids)",
        ):
            conn.execute(sql.SQL(ddl).format(s=s))

    # --- facts -----------------------------------------------------------------------------------------------

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        s = sql.Identifier(schema)
        rx_rows: list[tuple[Any, ...]] = []
        dispensers: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        withdrawals: list[tuple[Any, ...]] = []
        flags: list[tuple[Any, ...]] = []
        code_events: list[tuple[Any, ...]] = []
        actors: list[tuple[Any, ...]] = []
        changes: list[tuple[Any, ...]] = []
        activity: list[tuple[Any, ...]] = []
        drugs: list[tuple[Any, ...]] = []
        deliveries: list[tuple[Any, ...]] = []
        touched: dict[str, set[str]] = defaultdict(set)
        rx_in_batch: dict[UUID, tuple[str, str]] = {}

        for d in batch:
            e = d.event
            if e is None:
                continue

            def act(actor_id: str | None, d: Delivered = d) -> None:
                if actor_id:
                    activity.append((actor_id, d.aggregate_id, d.version, d.event_type, d.timestamp, d.event_id))
                    touched["actor"].add(actor_id)

            match e:
                case PrescriptionIssued():
                    items: dict[str, list[int]] = {}
                    for item in e.items:
                        q, days = items.get(item.drug_code, [0, 0])
                        items[item.drug_code] = [q + item.quantity, max(days, item.days_supply)]
                    rx_rows.append((d.aggregate_id, e.patient_ref, e.physician_id, e.hospital_id,
                                    e.physical_institution_id, json.dumps(items), d.timestamp,
                                    china_day(d.timestamp), d.version, d.event_id))
                    rx_in_batch[d.aggregate_id] = (e.patient_ref, e.physician_id)
                    touched["physician"].add(e.physician_id)
                    touched["patient"].add(e.patient_ref)
                    day = china_day(d.timestamp).isoformat()
                    touched["volume"].update((f"physician:{e.physician_id}|{day}", f"patient:{e.patient_ref}|{day}"))
                    for actor in {e.physician_id, e.hospital_id, e.physical_institution_id}:
                        act(actor)
                case FollowUpVisitRecorded():
                    for actor in {e.physician_id, e.hospital_id, e.physical_institution_id}:
                        act(actor)
                case PrescriptionApproved() | PrescriptionRejected():
                    act(e.pharmacist_id)
                case PrescriptionRouted():
                    dispensers.append((d.aggregate_id, e.dispenser_id))
                case PrescriptionAccepted():
                    act(e.dispenser_id)
                case PrescriptionDispensed():
                    act(e.dispenser_id)
                    touched["dispenser"].add(e.dispenser_id)
                    touched["rx"].add(str(d.aggregate_id))
                    for n, line in enumerate(e.lines, 1):
                        lines.append((d.aggregate_id, e.dispense_no, n, e.dispenser_id, line.drug_code, line.quantity,
                                      line.unit_price, line.price_cap, d.timestamp, china_day(d.timestamp), d.version,
                                      d.event_id))
                case DispenseWithdrawn():
                    withdrawals.append((d.aggregate_id, e.dispense_no))
                    touched["rx"].add(str(d.aggregate_id))
                case RuleFlagged():
                    code = e.details.get("trace_code") if e.rule_id == R8 else None
                    flags.append((d.aggregate_id, d.version, e.rule_id, code, d.timestamp, d.event_id))
                    if code:
                        touched["code"].add(code)
                    if e.rule_id == R5:
                        touched["rx_physician"].add(str(d.aggregate_id))
                    if e.rule_id == R7:
                        touched["rx"].add(str(d.aggregate_id))
                case DeliveryArranged():
                    act(e.delivery_enterprise_id)
                    address = getattr(e, "address_ref", None)
                    if address:
                        deliveries.append((d.aggregate_id, d.version, address, d.timestamp, d.event_id))
                        touched["address"].add(address)
                case TraceCodeSold():
                    code_events.append((d.aggregate_id, d.version, e.code, d.event_type, e.seller_id,
                                        e.prescription_id, d.timestamp, d.event_id))
                    touched["code"].add(e.code)
                case TraceCodeReturned():
                    code_events.append((d.aggregate_id, d.version, e.code, d.event_type, None, e.prescription_id,
                                        d.timestamp, d.event_id))
                    touched["code"].add(e.code)
                case _:
                    self._registry(d, actors, changes, drugs, touched)

        with conn.cursor() as cur:
            def insert(table: str, columns: str, types: str, rows: list[tuple[Any, ...]]) -> None:
                """One statement per table (``unnest`` of a column array each); a row already there is kept."""
                if rows:
                    casts = ", ".join(f"%s::{t}[]" for t in types.split())
                    cur.execute(sql.SQL("INSERT INTO {}.{} (" + columns + ") SELECT * FROM unnest(" + casts + ")"
                                        " ON CONFLICT DO NOTHING").format(s, sql.Identifier(table)),
                                [list(c) for c in zip(*rows, strict=True)])

            insert("rx", "prescription_id, patient_ref, physician_id, hospital_id, physical_institution_id, items,"
                   " issued_at, day, version, event_id", "uuid text text text text jsonb timestamptz date int text",
                   rx_rows)
            if dispensers:
                last = dict(dispensers)  # a prescription routed twice in the batch: its last routing
                cur.execute(sql.SQL("UPDATE {}.rx r SET dispenser_id = u.dispenser FROM unnest(%s::uuid[], %s::text[])"
                                    " AS u(rx, dispenser) WHERE r.prescription_id = u.rx").format(s),
                            (list(last), list(last.values())))
            insert("lines", "prescription_id, dispense_no, line_no, dispenser_id, drug_code, quantity, unit_price,"
                   " price_cap, at, day, version, event_id",
                   "uuid int int text text int numeric numeric timestamptz date int text", lines)
            if withdrawals:
                cur.execute(sql.SQL("UPDATE {}.lines l SET withdrawn = true FROM unnest(%s::uuid[], %s::int[])"
                                    " AS w(rx, no) WHERE l.prescription_id = w.rx AND l.dispense_no = w.no").format(s),
                            [list(c) for c in zip(*withdrawals, strict=True)])
            insert("flags", "prescription_id, version, rule_id, trace_code, at, event_id",
                   "uuid int text text timestamptz text", flags)
            insert("code_events", "stream_id, version, code, event_type, seller_id, prescription_id, at, event_id",
                   "uuid int text text text uuid timestamptz text", code_events)
            insert("actors", "aggregate_id, kind, actor_id", "uuid text text", actors)
            insert("registry_changes", "aggregate_id, version, change, event_type, at, event_id, effective_at",
                   "uuid int text text timestamptz text timestamptz", changes)
            insert("activity", "actor_id, aggregate_id, version, event_type, at, event_id",
                   "text uuid int text timestamptz text", activity)
            if drugs:  # in order: a drug listed twice in the batch keeps its last generic
                cur.executemany(sql.SQL("INSERT INTO {}.drugs (drug_code, generic_code) VALUES (%s, %s)"
                                        " ON CONFLICT (drug_code) DO UPDATE SET generic_code = excluded.generic_code"
                                        ).format(s), drugs)
            insert("deliveries", "prescription_id, version, address_ref, at, event_id",
                   "uuid int text timestamptz text", deliveries)

        self._expand(conn, s, touched, actors, changes, drugs)
        self._recompute(conn, schema, touched)

    def _registry(self, d: Delivered, actors: list[tuple[Any, ...]], changes: list[tuple[Any, ...]],
                  drugs: list[tuple[Any, ...]], touched: dict[str, set[str]]) -> None:
        """Registry events, read by name and field so new registry events of the same shape are understood:
        ``<Kind>Registered``/``Designated`` name the actor; ``…Suspended`` / ``…Reinstated`` (or an ``active`` /
        ``suspended`` / ``agreement_active`` field) change its standing; a drug listing names its generic."""
        e, event_type = d.event, d.event_type
        generic = getattr(e, "generic_code", None)
        drug = getattr(e, "drug_code", None)
        if isinstance(generic, str) and isinstance(drug, str):
            drugs.append((drug, generic))
            touched["drug"].add(drug)
        kind = _registry_kind(event_type)
        if kind is None:
            return
        actor_id = getattr(e, kind[1], None)
        if isinstance(actor_id, str):
            actors.append((d.aggregate_id, kind[0], actor_id))
        change = None
        if _SUSPEND.search(event_type):
            change = "suspended"
        elif _LIFT.search(event_type):
            change = "reinstated"
        else:
            for field_name, active_when in (("suspended", False), ("active", True), ("agreement_active", True)):
                value = getattr(e, field_name, None)
                if isinstance(value, bool):
                    change = "reinstated" if value == active_when else "suspended"
                    break
            if change is not None and d.version == 1 and change == "reinstated":
                change = None  # a registration that is active from the start changes no standing
        if change is not None:
            effective = getattr(e, "effective_from", None)
            effective_at = (datetime.combine(effective, time(0), tzinfo=UTC) - CHINA
                            if isinstance(effective, date) and not isinstance(effective, datetime) else None)
            changes.append((d.aggregate_id, d.version, change, event_type, d.timestamp, d.event_id, effective_at))
            touched["registry_aggregate"].add(str(d.aggregate_id))

    def _expand(self, conn: psycopg.Connection[Any], s: sql.Identifier, touched: dict[str, set[str]],
                actors: list[tuple[Any, ...]], changes: list[tuple[Any, ...]], drugs: list[tuple[Any, ...]]) -> None:
        """Turn what the batch touched into the subjects whose findings are computed again."""
        if touched.get("registry_aggregate"):
            rows = conn.execute(sql.SQL("SELECT actor_id FROM {}.actors WHERE aggregate_id = ANY(%s)").format(s),
                                ([UUID(a) for a in touched["registry_aggregate"]],)).fetchall()
            touched["actor"].update(r[0] for r in rows)
        rx_ids = [UUID(r) for r in touched.get("rx", set()) | touched.get("rx_physician", set())]
        if rx_ids:
            for patient, physician, dispenser in conn.execute(sql.SQL(
                    "SELECT patient_ref, physician_id, dispenser_id FROM {}.rx WHERE prescription_id = ANY(%s)"
                    ).format(s), (rx_ids,)):
                touched["patient"].add(patient)
                touched["physician"].add(physician)
                if dispenser:
                    touched["dispenser"].add(dispenser)
            for dispenser, day in conn.execute(sql.SQL(
                    "SELECT DISTINCT dispenser_id, day FROM {}.lines WHERE prescription_id = ANY(%s)").format(s),
                    (rx_ids,)):
                touched["dispenser"].add(dispenser)
                touched["volume"].add(f"dispenser:{dispenser}|{day.isoformat()}")
        if touched.get("drug"):
            for (patient,) in conn.execute(sql.SQL(
                    "SELECT DISTINCT r.patient_ref FROM {s}.lines l JOIN {s}.rx r USING (prescription_id)"
                    " WHERE l.drug_code = ANY(%s)").format(s=s), (list(touched["drug"]),)):
                touched["patient"].add(patient)

    # --- findings --------------------------------------------------------------------------------------------

    def _recompute(self, conn: psycopg.Connection[Any], schema: str, touched: dict[str, set[str]]) -> None:
        s = sql.Identifier(schema)
        work: list[tuple[tuple[str, ...], set[str], Any]] = [
            ((TC_REPEAT, TC_DUPSALE), touched.get("code", set()), self._codes),
            ((DOCTOR_SHOP,), touched.get("patient", set()), self._doctor_shopping),
            ((SUSPENDED_ACTIVE,), touched.get("actor", set()), self._suspended),
            ((R5_RATE,), touched.get("physician", set()), self._r5_rates),
            ((R7_RATE, AT_CAP), touched.get("dispenser", set()), self._prices),
            ((ADDRESS,), touched.get("address", set()), self._addresses),
        ]
        for patterns, subjects, compute in work:
            if not subjects:
                continue
            keys = sorted(subjects)
            found: list[Finding] = compute(conn, s, keys)
            self._store(conn, s, patterns, keys, found)
        if touched.get("volume"):
            found, cleared = self._volumes(conn, s, touched["volume"])
            self._store(conn, s, (VOLUME,), [], found, subjects=cleared)

    def _store(self, conn: psycopg.Connection[Any], s: sql.Identifier, patterns: tuple[str, ...], keys: list[str],
               found: list[Finding], *, subjects: list[str] | None = None) -> None:
        """Upsert the findings of these subjects and delete the ones that no longer hold. ``keys``: the keys the
        findings were computed for (a finding's subject up to its first ``|``); ``subjects``: exactly these subjects
        instead (volume: ``<party>|<day>`` for the days computed again)."""
        keep = [f.id for f in found]
        if subjects is not None:
            conn.execute(sql.SQL("DELETE FROM {}.findings WHERE pattern = ANY(%s) AND subject = ANY(%s)"
                                 " AND NOT finding_id = ANY(%s)").format(s), (list(patterns), subjects, keep))
        else:
            conn.execute(sql.SQL("DELETE FROM {}.findings WHERE pattern = ANY(%s)"
                                 " AND split_part(subject, '|', 1) = ANY(%s) AND NOT finding_id = ANY(%s)").format(s),
                         (list(patterns), keys, keep))
        if not found:
            return
        rows = []
        for f in found:
            unique = {(x["aggregate_id"], x["version"]): x for x in f.evidence}  # one link per event
            evidence = sorted(unique.values(), key=lambda x: (x["at"], x["event_id"]))
            first_at, last_at = evidence[0]["at"], evidence[-1]["at"]
            rows.append((f.id, f.pattern, RULE_OF.get(f.pattern), f.severity, f.subject, sorted(set(f.parties)),
                         f.patient_ref, sorted(set(f.prescription_ids or ()), key=str), f.explanation, first_at, last_at,
                         json.dumps(evidence[-EVIDENCE_MAX:])))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL(
                "INSERT INTO {}.findings (finding_id, pattern, rule_id, severity, subject, parties, patient_ref,"
                " prescription_ids, explanation, first_at, last_at, evidence)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (finding_id) DO UPDATE SET severity = excluded.severity, parties = excluded.parties,"
                " patient_ref = excluded.patient_ref, prescription_ids = excluded.prescription_ids,"
                " explanation = excluded.explanation, first_at = excluded.first_at, last_at = excluded.last_at,"
                " evidence = excluded.evidence").format(s), rows)

    # trace codes ------------------------------------------------------------------------------------------------

    def _codes(self, conn: psycopg.Connection[Any], s: sql.Identifier, codes: list[str]) -> list[Finding]:
        events: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in conn.execute(sql.SQL(
                "SELECT code, stream_id, version, event_type, seller_id, prescription_id, at, event_id"
                " FROM {}.code_events WHERE code = ANY(%s) ORDER BY at, stream_id, version").format(s), (codes,)):
            events[row[0]].append(row[1:])
        attempts: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in conn.execute(sql.SQL(
                "SELECT f.trace_code, f.prescription_id, f.version, f.at, f.event_id, r.dispenser_id, r.patient_ref"
                " FROM {s}.flags f LEFT JOIN {s}.rx r USING (prescription_id)"
                " WHERE f.trace_code = ANY(%s) ORDER BY f.at, f.prescription_id, f.version").format(s=s), (codes,)):
            attempts[row[0]].append(row[1:])
        out: list[Finding] = []
        for code in codes:
            sales = [e for e in events.get(code, []) if e[2] == "TraceCodeSold"]
            links = [_link(e[6], e[0], e[1], e[2], e[5]) for e in sales]
            tries = attempts.get(code, [])
            if tries:
                rx_ids = {t[0] for t in tries} | {e[4] for e in sales if e[4]}
                parties = {f"pharmacy:{t[4]}" for t in tries if t[4]} | {f"seller:{e[3]}" for e in sales if e[3]}
                sellers = sorted({e[3] for e in sales if e[3]})
                severity = "high" if len(tries) >= 2 or len({t[0] for t in tries}) >= 2 else "medium"
                sold = (f"sold by {', '.join(sellers)} on {sales[0][5]:%Y-%m-%d}" if sales
                        else "with no sale recorded here")
                out.append(Finding(
                    TC_REPEAT, code, severity, sorted(parties),
                    f"trace code {code}, {sold}, was presented again {len(tries)} time(s) on "
                    f"{len({t[0] for t in tries})} prescription(s) and refused under R8 each time.",
                    links + [_link(t[3], t[0], t[1], "RuleFlagged", t[2]) for t in tries],
                    prescription_ids=sorted(rx_ids, key=str)))
            live: tuple[Any, ...] | None = None
            doubles: list[tuple[Any, ...]] = []
            for e in events.get(code, []):
                if e[2] == "TraceCodeSold":
                    if live is not None:
                        doubles.extend([live, e] if live not in doubles else [e])
                    live = e
                else:
                    live = None
            if doubles:
                out.append(Finding(
                    TC_DUPSALE, code, "critical", sorted({f"seller:{e[3]}" for e in doubles if e[3]}),
                    f"trace code {code} was sold {len(doubles)} times with no return in between "
                    f"(by {', '.join(sorted({str(e[3]) for e in doubles}))}).",
                    [_link(e[6], e[0], e[1], e[2], e[5]) for e in doubles],
                    prescription_ids=sorted({e[4] for e in doubles if e[4]}, key=str)))
        return out

    # doctor shopping ---------------------------------------------------------------------------------------------

    def _doctor_shopping(self, conn: psycopg.Connection[Any], s: sql.Identifier, patients: list[str]) -> list[Finding]:
        supplies: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for (rx_id, dispense_no, drug, generic, qty, at, version, event_id, patient, physician, hospital,
             raw_items) in conn.execute(sql.SQL(
                "SELECT l.prescription_id, l.dispense_no, l.drug_code, coalesce(d.generic_code, l.drug_code),"
                " l.quantity, l.at, l.version, l.event_id, r.patient_ref, r.physician_id, r.hospital_id, r.items"
                " FROM {s}.lines l JOIN {s}.rx r USING (prescription_id) LEFT JOIN {s}.drugs d USING (drug_code)"
                " WHERE r.patient_ref = ANY(%s) AND NOT l.withdrawn"
                " ORDER BY l.at, l.prescription_id, l.dispense_no, l.line_no").format(s=s), (patients,)):
            items = raw_items if isinstance(raw_items, dict) else json.loads(raw_items)
            prescribed, days = items.get(drug, [qty, 0])
            supply_days = math.ceil(days * qty / prescribed) if prescribed else 0
            if supply_days <= 0:
                continue
            supplies[(patient, generic)].append({
                "rx": rx_id, "start": at, "end": at + timedelta(days=supply_days), "physician": physician,
                "hospital": hospital, "link": _link(event_id, rx_id, version, "PrescriptionDispensed", at),
                "dispense": (rx_id, dispense_no)})
        out: list[Finding] = []
        need = timedelta(days=self.t.overlap_days)
        for (patient, generic), rows in sorted(supplies.items()):
            involved: set[int] = set()
            longest = timedelta(0)
            for i, a in enumerate(rows):
                for j in range(i + 1, len(rows)):
                    b = rows[j]
                    if a["physician"] == b["physician"]:
                        continue
                    overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])
                    if overlap >= need:
                        involved.update((i, j))
                        longest = max(longest, overlap)
            if not involved:
                continue
            chosen = [rows[i] for i in sorted(involved)]
            physicians = sorted({r["physician"] for r in chosen})
            hospitals = sorted({r["hospital"] for r in chosen})
            severity = "high" if len(physicians) >= 3 or len(hospitals) >= 2 else "medium"
            out.append(Finding(
                DOCTOR_SHOP, f"{patient}|{generic}", severity,
                [f"patient:{patient}", *(f"physician:{p}" for p in physicians), *(f"hospital:{h}" for h in hospitals)],
                f"patient {_short(patient)} held overlapping supplies of generic {generic} from {len(physicians)} "
                f"physicians at {len(hospitals)} hospital(s), overlapping by up to {longest.days} days "
                f"(threshold {self.t.overlap_days}) between {chosen[0]['start']:%Y-%m-%d} and "
                f"{max(r['end'] for r in chosen):%Y-%m-%d}.",
                [r["link"] for r in chosen], patient_ref=patient, prescription_ids=[r["rx"] for r in chosen]))
        return out

    # suspended actors --------------------------------------------------------------------------------------------

    def _suspended(self, conn: psycopg.Connection[Any], s: sql.Identifier, actor_ids: list[str]) -> list[Finding]:
        changes: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for actor, kind, aggregate, version, change, event_type, at, event_id, effective in conn.execute(sql.SQL(
                "SELECT a.actor_id, a.kind, c.aggregate_id, c.version, c.change, c.event_type, c.at, c.event_id,"
                " coalesce(c.effective_at, c.at)"
                " FROM {s}.registry_changes c JOIN {s}.actors a USING (aggregate_id)"
                " WHERE a.actor_id = ANY(%s) ORDER BY c.aggregate_id, c.version").format(s=s), (actor_ids,)):
            changes[actor].append((kind, aggregate, version, change, event_type, at, event_id, effective))
        if not changes:
            return []
        activity: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for actor, aggregate, version, event_type, at, event_id in conn.execute(sql.SQL(
                "SELECT actor_id, aggregate_id, version, event_type, at, event_id FROM {}.activity"
                " WHERE actor_id = ANY(%s) ORDER BY at, aggregate_id, version").format(s), (list(changes),)):
            activity[actor].append((aggregate, version, event_type, at, event_id))
        out: list[Finding] = []
        for actor, rows in sorted(changes.items()):
            kind = rows[0][0]
            periods: list[tuple[tuple[Any, ...], datetime | None]] = []
            for row in rows:
                if row[3] == "suspended":
                    if not periods or periods[-1][1] is not None:
                        periods.append((row, None))
                elif periods and periods[-1][1] is None:
                    periods[-1] = (periods[-1][0], row[7])
            for start, end in periods:
                during = [a for a in activity.get(actor, []) if a[3] > start[7] and (end is None or a[3] < end)]
                if not during:
                    continue
                rx_ids = sorted({a[0] for a in during if a[2].startswith("Prescription")}, key=str)
                out.append(Finding(
                    SUSPENDED_ACTIVE, f"{actor}|{start[1]}:{start[2]}", "critical" if len(during) >= 3 else "high",
                    [f"{kind}:{actor}"],
                    f"{kind} {actor} was suspended from {start[7]:%Y-%m-%d %H:%M} UTC ({start[4]}, recorded "
                    f"{start[5]:%Y-%m-%d %H:%M}) and still took part "
                    f"in {len(during)} event(s) after it, the last on {during[-1][3]:%Y-%m-%d %H:%M} UTC.",
                    [_link(start[6], start[1], start[2], start[4], start[5]),
                     *(_link(a[4], a[0], a[1], a[2], a[3]) for a in during)],
                    prescription_ids=rx_ids))
        return out

    # R5 / R7 patterns --------------------------------------------------------------------------------------------

    def _r5_rates(self, conn: psycopg.Connection[Any], s: sql.Identifier, physicians: list[str]) -> list[Finding]:
        out: list[Finding] = []
        rows = conn.execute(sql.SQL(
            "SELECT r.physician_id, count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM {s}.flags f"
            "   WHERE f.prescription_id = r.prescription_id AND f.rule_id = %s))"
            " FROM {s}.rx r WHERE r.physician_id = ANY(%s) GROUP BY r.physician_id").format(s=s),
            (R5, physicians)).fetchall()
        for physician, total, flagged in rows:
            if total < self.t.rate_min_count or flagged / total < self.t.r5_rate:
                continue
            links = [_link(r[3], r[0], r[1], "RuleFlagged", r[2]) for r in conn.execute(sql.SQL(
                "SELECT f.prescription_id, f.version, f.at, f.event_id FROM {s}.flags f JOIN {s}.rx r"
                " USING (prescription_id) WHERE r.physician_id = %s AND f.rule_id = %s"
                " ORDER BY f.at, f.prescription_id, f.version").format(s=s), (physician, R5))]
            out.append(Finding(
                R5_RATE, physician, "high" if flagged / total >= 0.8 else "medium", [f"physician:{physician}"],
                f"physician {physician} added drugs beyond the first visit without justification (R5) on {flagged} of "
                f"{total} prescriptions ({flagged / total:.0%}; threshold {self.t.r5_rate:.0%} of at least "
                f"{self.t.rate_min_count}).", links, prescription_ids=sorted({UUID(l_["aggregate_id"]) for l_ in links},
                                                                            key=str)))
        return out

    def _prices(self, conn: psycopg.Connection[Any], s: sql.Identifier, dispensers: list[str]) -> list[Finding]:
        """R7 patterns per dispenser, from counts over its lines with a cap on record (evidence: the newest lines)."""
        out: list[Finding] = []
        counts = conn.execute(sql.SQL(
            "SELECT dispenser_id, count(*), count(*) FILTER (WHERE unit_price > price_cap),"
            " count(*) FILTER (WHERE unit_price = price_cap),"
            " count(DISTINCT drug_code) FILTER (WHERE unit_price = price_cap)"
            " FROM {}.lines WHERE dispenser_id = ANY(%s) AND NOT withdrawn AND price_cap IS NOT NULL"
            " GROUP BY dispenser_id ORDER BY dispenser_id").format(s), (dispensers,)).fetchall()

        def evidence(dispenser: str, comparison: str) -> list[tuple[Any, ...]]:
            rows = conn.execute(sql.SQL(
                "SELECT prescription_id, version, event_id, at FROM {}.lines WHERE dispenser_id = %s"
                " AND NOT withdrawn AND unit_price " + comparison + " price_cap"
                " ORDER BY at DESC, prescription_id, dispense_no, line_no LIMIT %s").format(s),
                (dispenser, EVIDENCE_MAX)).fetchall()
            return rows[::-1]

        for dispenser, total, above, at_cap, drugs in counts:
            if total >= self.t.rate_min_count and above and above / total >= self.t.r7_rate:
                rows = evidence(dispenser, ">")
                out.append(Finding(
                    R7_RATE, dispenser, "high" if above / total >= 0.5 else "medium", [f"pharmacy:{dispenser}"],
                    f"{dispenser} sold {above} of {total} dispensed lines above the price cap "
                    f"({above / total:.0%}; threshold {self.t.r7_rate:.0%}).",
                    [_link(r[2], r[0], r[1], "PrescriptionDispensed", r[3]) for r in rows],
                    prescription_ids=sorted({r[0] for r in rows}, key=str)))
            if total >= self.t.at_cap_min_lines and at_cap / total >= self.t.at_cap_share and drugs >= 3:
                rows = evidence(dispenser, "=")
                out.append(Finding(
                    AT_CAP, dispenser, "medium" if at_cap < total else "high", [f"pharmacy:{dispenser}"],
                    f"{dispenser} priced {at_cap} of {total} dispensed lines ({drugs} drugs) exactly at the "
                    f"price cap ({at_cap / total:.0%}; threshold {self.t.at_cap_share:.0%} of at least "
                    f"{self.t.at_cap_min_lines} lines).",
                    [_link(r[2], r[0], r[1], "PrescriptionDispensed", r[3]) for r in rows],
                    prescription_ids=sorted({r[0] for r in rows}, key=str)))
        return out

    # volume --------------------------------------------------------------------------------------------------------

    def _volumes(self, conn: psycopg.Connection[Any], s: sql.Identifier, touched: set[str]
                 ) -> tuple[list[Finding], list[str]]:
        """Volume findings of the days a batch can have changed: an event on day X changes the counts of X and the
        history of the ``volume_window_days`` after it. Returns the findings and every subject computed again."""
        window = timedelta(days=self.t.volume_window_days)
        days_of: dict[str, set[date]] = defaultdict(set)
        for subject in touched:
            key, _, day_text = subject.partition("|")
            days_of[key].add(date.fromisoformat(day_text))
        sources = {
            "physician": ("{}.rx", "physician_id", "issued_at", "'PrescriptionIssued'", "prescription_id, version"),
            "patient": ("{}.rx", "patient_ref", "issued_at", "'PrescriptionIssued'", "prescription_id, version"),
            "dispenser": ("{}.lines", "dispenser_id", "at", "'PrescriptionDispensed'",
                          "DISTINCT prescription_id, version"),
        }
        verb = {"physician": "issued", "patient": "received", "dispenser": "dispensed"}
        out: list[Finding] = []
        cleared: list[str] = []
        by_kind: dict[str, list[tuple[str, date, date]]] = defaultdict(list)
        for key, days in sorted(days_of.items()):
            kind, _, party = key.partition(":")
            by_kind[kind].append((party, min(days), max(days) + window))
            cleared.extend(f"{key}|{(min(days) + timedelta(days=i)).isoformat()}"
                           for i in range((max(days) + window - min(days)).days + 1))
        for kind, ranges in sorted(by_kind.items()):
            table, column, at_column, event_type, ids = sources[kind]
            live = " AND NOT withdrawn" if kind == "dispenser" else ""
            parties = [r[0] for r in ranges]
            first_of = dict(conn.execute(sql.SQL(  # one index probe per party
                "SELECT k.party, (SELECT min(day) FROM " + table + " WHERE " + column + " = k.party" + live + ")"
                " FROM unnest(%s::text[]) AS k(party)").format(s), (parties,)).fetchall())
            counts: dict[str, dict[date, int]] = defaultdict(dict)
            for party, day, n in conn.execute(sql.SQL(
                    "SELECT k.party, c.day, c.n FROM unnest(%s::text[], %s::date[], %s::date[]) AS k(party, lo, hi)"
                    " CROSS JOIN LATERAL (SELECT day, count(*) AS n FROM (SELECT " + ids + ", day FROM " + table +
                    "   WHERE " + column + " = k.party AND day BETWEEN k.lo AND k.hi" + live + ") x GROUP BY day) c"
                    ).format(s), (parties, [r[1] - window for r in ranges], [r[2] for r in ranges])):
                counts[party][day] = int(n)
            for party, lo, hi in ranges:
                first = first_of.get(party)
                if first is None:
                    continue
                key = f"{kind}:{party}"
                mine = counts.get(party, {})
                for day, count in sorted(mine.items()):
                    if day < lo or day > hi or count < self.t.volume_min_count:
                        continue
                    start = max(first, day - window)
                    history = [mine.get(start + timedelta(days=j), 0) for j in range((day - start).days)]
                    if len(history) < self.t.volume_min_history_days:
                        continue
                    median = statistics.median(history)
                    mad = statistics.median([abs(x - median) for x in history])
                    threshold = median + self.t.volume_k * max(1.4826 * mad, 1.0)
                    if count <= threshold:
                        continue
                    rows = conn.execute(sql.SQL(
                        "SELECT " + ids + ", event_id, " + at_column + " FROM " + table + " WHERE " + column + " = %s"
                        " AND day = %s" + live + " ORDER BY 4, 1, 2 LIMIT %s").format(s),
                        (party, day, EVIDENCE_MAX)).fetchall()
                    party_label = "pharmacy" if kind == "dispenser" else kind
                    out.append(Finding(
                        VOLUME, f"{key}|{day.isoformat()}", "high" if count > 2 * threshold else "medium",
                        [f"{party_label}:{party}"],
                        f"{party_label} {_short(party) if kind == 'patient' else party} {verb[kind]} {count} prescriptions "
                        f"on {day.isoformat()} (China time) against a median of {median:g} a day (MAD {mad:g}) over its "
                        f"previous {len(history)} days, above median + {self.t.volume_k:g}·MAD (threshold {threshold:.1f}).",
                        [_link(r[2], r[0], r[1], event_type.strip("'"), r[3]) for r in rows],
                        patient_ref=party if kind == "patient" else None,
                        prescription_ids=sorted({r[0] for r in rows}, key=str)))
        return out, cleared

    # addresses -----------------------------------------------------------------------------------------------------

    def _addresses(self, conn: psycopg.Connection[Any], s: sql.Identifier, addresses: list[str]) -> list[Finding]:
        per: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in conn.execute(sql.SQL(
                "SELECT d.address_ref, d.prescription_id, d.version, d.at, d.event_id, r.patient_ref"
                " FROM {s}.deliveries d JOIN {s}.rx r USING (prescription_id) WHERE d.address_ref = ANY(%s)"
                " ORDER BY d.at, d.prescription_id, d.version").format(s=s), (addresses,)):
            per[row[0]].append(row[1:])
        out: list[Finding] = []
        for address, rows in sorted(per.items()):
            patients = {r[4] for r in rows}
            if len(patients) < self.t.address_patients:
                continue
            out.append(Finding(
                ADDRESS, address, "high" if len(patients) >= 2 * self.t.address_patients else "medium",
                [f"address:{address}"],
                f"drugs of {len(patients)} different patients were delivered to one address ({_short(address)}, "
                f"pseudonymised) in {len(rows)} deliveries (threshold {self.t.address_patients} patients).",
                [_link(r[3], r[0], r[1], "DeliveryArranged", r[2]) for r in rows],
                prescription_ids=sorted({r[0] for r in rows}, key=str)))
        return out
