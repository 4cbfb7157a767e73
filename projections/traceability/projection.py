"""Traceability: the whole trail of each prescription, end to end, and indexes into it.

visit (with the original offline diagnosis) → prescription → review → routing / acceptance / return → each
dispense line with its trace codes → delivery / collection → settlement → audit / clawback; each step with its
time, actor and event id (DOMAIN.md, the trail; 002 §二(二)4, 001 art. 15 and 29, 003 art. 8).

Patients appear only as their keyed pseudonym (``patient_ref``): sealed personal fields are never stored here.

Tables (schema ``traceability`` by default):
- ``steps``: one row per event of a prescription or visit stream (PK stream_id, version), details as JSON;
- ``prescriptions`` / ``visits``: the current summary of each stream, indexed by patient, physician, hospital;
- ``routings``: every routing of a prescription (a returned one may have been routed to several pharmacies);
- ``trace_code_uses``: one row per trace code scanned in a dispense (withdrawals mark it), indexed by code;
- ``trace_code_events``: the trace code streams' own sales and returns (offline sales too), indexed by code and by
  prescription, each with its details;
- ``flags``: every RuleFlagged, indexed by rule.

``seq`` columns (prescriptions, visits, flags) number rows in the order this projection first wrote them: the API
pages its lists by them (``queries.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.contracts import private_fields
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.prescription import (
    DeliveryArranged,
    DispenseWithdrawn,
    FeesClawedBack,
    FeesRefusedInAudit,
    PacksReturned,
    PrescriptionAccepted,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionCollected,
    PrescriptionDelivered,
    PrescriptionDispensed,
    PrescriptionEvent,
    PrescriptionExpired,
    PrescriptionIssued,
    PrescriptionRejected,
    PrescriptionReturned,
    PrescriptionRouted,
    PrescriptionSettled,
    RoutingBasis,
    RuleFlagged,
)
from events.registries import RegistryEvent
from events.trace_code import TraceCodeReturned, TraceCodeSold
from projections.base import Delivered, event_types
from projections.hospital_settlement.ledger import upsert_rows
from projections.traceability import registry_changes

_STATUS: dict[type[Any], str] = {
    PrescriptionIssued: "issued",
    PrescriptionApproved: "approved",
    PrescriptionRejected: "rejected",
    PrescriptionRouted: "routed",
    PrescriptionAccepted: "accepted",
    PrescriptionReturned: "returned",
    DispenseWithdrawn: "dispense_withdrawn",
    PacksReturned: "packs_returned",
    DeliveryArranged: "delivery_arranged",
    PrescriptionDelivered: "delivered",
    PrescriptionCollected: "collected",
    PrescriptionSettled: "settled",
    PrescriptionCancelled: "cancelled",
    PrescriptionExpired: "expired",
}


@dataclass
class RxRow:
    prescription_id: UUID
    encounter_id: UUID | None = None
    hospital_id: str | None = None
    physical_institution_id: str | None = None
    pooling_region: str | None = None
    business_type: str | None = None
    patient_ref: str | None = None
    physician_id: str | None = None
    diagnosis_code: str | None = None
    diagnosis_name: str | None = None
    pharmacist_id: str | None = None
    dispenser_kind: str | None = None
    dispenser_id: str | None = None
    delivery_enterprise_id: str | None = None
    status: str | None = None
    dispensed_quantity: int = 0
    settled_total: Any = None
    refused: Any = None
    clawed_back: Any = None
    flags: int = 0
    issued_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0


_RX_COLUMNS = tuple(f.name for f in fields(RxRow))
_RX_TYPES = ("uuid", "uuid", *(["text"] * 13), "int", *(["numeric"] * 3), "int", "timestamptz", "timestamptz", "int")


@dataclass
class VisitRow:
    encounter_id: UUID
    hospital_id: str
    physical_institution_id: str
    pooling_region: str
    business_type: str
    patient_ref: str
    physician_id: str
    diagnosis_code: str
    diagnosis_name: str
    original_diagnosis_code: str
    original_diagnosis_date: Any
    original_institution_id: str
    verification_method: str
    consultation_fee: Any
    visited_at: datetime
    settled_at: datetime | None = None
    version: int = 0


_VISIT_COLUMNS = tuple(f.name for f in fields(VisitRow))
_VISIT_TYPES = ("uuid", *(["text"] * 9), "date", "text", "text", "numeric", "timestamptz", "timestamptz", "int")


def _details(event: Any) -> str:
    """The event's business fields as JSON text (``events.contracts.private_fields`` left out: the one filter)."""
    return str(event.model_dump_json(exclude=set(private_fields(type(event)))))


def _agency(region: str | None) -> str:
    return f"agency:{region}" if region else "agency"


class Traceability:
    """The traceability projection: trails per prescription and indexes by patient, physician, pharmacy, code."""

    name = "traceability"
    reads = event_types(RegistryEvent, PrescriptionEvent, FollowUpVisitRecorded, ConsultationSettled, TraceCodeSold,
                        TraceCodeReturned)

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        for ddl in (
            ("CREATE TABLE IF NOT EXISTS {s}.steps (stream_id uuid, version int, prescription_id uuid,"
            " step text NOT NULL, at timestamptz NOT NULL, actor text NOT NULL, event_id text NOT NULL,"
            " hash text NOT NULL, details jsonb NOT NULL, PRIMARY KEY (stream_id, version))"),
            ("CREATE TABLE IF NOT EXISTS {s}.prescriptions (prescription_id uuid PRIMARY KEY, encounter_id uuid,"
            " hospital_id text, physical_institution_id text, pooling_region text, business_type text,"
            " patient_ref text, physician_id text, diagnosis_code text, diagnosis_name text, pharmacist_id text,"
            " dispenser_kind text, dispenser_id text, delivery_enterprise_id text, status text,"
            " dispensed_quantity int NOT NULL DEFAULT 0, settled_total numeric(16,2), refused numeric(16,2),"
            " clawed_back numeric(16,2), flags int NOT NULL DEFAULT 0, issued_at timestamptz, updated_at timestamptz,"
            " version int NOT NULL)"),
            "CREATE INDEX IF NOT EXISTS prescriptions_patient ON {s}.prescriptions (patient_ref, issued_at)",
            "CREATE INDEX IF NOT EXISTS prescriptions_physician ON {s}.prescriptions (physician_id, issued_at)",
            "CREATE INDEX IF NOT EXISTS prescriptions_hospital ON {s}.prescriptions (hospital_id, issued_at)",
            "CREATE INDEX IF NOT EXISTS prescriptions_encounter ON {s}.prescriptions (encounter_id)",
            "ALTER TABLE {s}.prescriptions ADD COLUMN IF NOT EXISTS seq bigint GENERATED BY DEFAULT AS IDENTITY",
            "CREATE UNIQUE INDEX IF NOT EXISTS prescriptions_seq ON {s}.prescriptions (seq)",
            "CREATE INDEX IF NOT EXISTS prescriptions_hospital_seq ON {s}.prescriptions (hospital_id, seq)",
            "CREATE INDEX IF NOT EXISTS prescriptions_patient_seq ON {s}.prescriptions (patient_ref, seq)",
            "CREATE INDEX IF NOT EXISTS prescriptions_physician_seq ON {s}.prescriptions (physician_id, seq)",
            ("CREATE INDEX IF NOT EXISTS prescriptions_to_review ON {s}.prescriptions (hospital_id, seq)"
             " WHERE status = 'issued'"),
            "CREATE INDEX IF NOT EXISTS prescriptions_to_review_any ON {s}.prescriptions (seq) WHERE status = 'issued'",
            ("CREATE TABLE IF NOT EXISTS {s}.visits (encounter_id uuid PRIMARY KEY, hospital_id text,"
            " physical_institution_id text, pooling_region text, business_type text, patient_ref text,"
            " physician_id text, diagnosis_code text, diagnosis_name text, original_diagnosis_code text,"
            " original_diagnosis_date date, original_institution_id text, verification_method text,"
            " consultation_fee numeric(16,2), visited_at timestamptz, settled_at timestamptz, version int NOT NULL)"),
            "CREATE INDEX IF NOT EXISTS visits_patient ON {s}.visits (patient_ref, visited_at)",
            "CREATE INDEX IF NOT EXISTS visits_physician ON {s}.visits (physician_id, visited_at)",
            "ALTER TABLE {s}.visits ADD COLUMN IF NOT EXISTS seq bigint GENERATED BY DEFAULT AS IDENTITY",
            "CREATE INDEX IF NOT EXISTS visits_hospital_seq ON {s}.visits (hospital_id, seq)",
            "CREATE INDEX IF NOT EXISTS visits_region ON {s}.visits (pooling_region, hospital_id)",
            ("CREATE TABLE IF NOT EXISTS {s}.routings (prescription_id uuid, version int, dispenser_kind text NOT NULL,"
            " dispenser_id text NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (prescription_id, version))"),
            "CREATE INDEX IF NOT EXISTS routings_dispenser ON {s}.routings (dispenser_id, at)",
            ("CREATE TABLE IF NOT EXISTS {s}.trace_code_uses (code text NOT NULL, prescription_id uuid,"
            " dispense_no int, line_no int NOT NULL, drug_code text NOT NULL, dispenser_id text NOT NULL,"
            " patient_ref text, at timestamptz NOT NULL, event_id text NOT NULL, withdrawn_at timestamptz,"
            " withdrawn_event_id text, PRIMARY KEY (prescription_id, dispense_no, code))"),
            "CREATE INDEX IF NOT EXISTS trace_code_uses_code ON {s}.trace_code_uses (code)",
            ("CREATE TABLE IF NOT EXISTS {s}.trace_code_events (stream_id uuid, version int, code text NOT NULL,"
            " event_type text NOT NULL, business_type text NOT NULL, drug_code text, seller_id text,"
            " prescription_id uuid, patient_ref text, reason text, at timestamptz NOT NULL, event_id text NOT NULL,"
            " PRIMARY KEY (stream_id, version))"),
            "CREATE INDEX IF NOT EXISTS trace_code_events_code ON {s}.trace_code_events (code)",
            "ALTER TABLE {s}.trace_code_events ADD COLUMN IF NOT EXISTS details jsonb",
            "CREATE INDEX IF NOT EXISTS trace_code_events_prescription ON {s}.trace_code_events (prescription_id)",
            ("CREATE TABLE IF NOT EXISTS {s}.flags (prescription_id uuid, version int, rule_id text NOT NULL,"
             " reason text NOT NULL, at timestamptz NOT NULL, details jsonb NOT NULL,"
             " seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, PRIMARY KEY (prescription_id, version))"),
            "CREATE INDEX IF NOT EXISTS flags_rule ON {s}.flags (rule_id, seq)",
        ):
            conn.execute(sql.SQL(ddl).format(s=s))
        registry_changes.create_tables(conn, schema)

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        s = sql.Identifier(schema)
        registry_changes.apply(conn, schema, batch)  # who changed which registry fact when
        rx_ids = {d.aggregate_id for d in batch if isinstance(d.event, PrescriptionEvent)}
        rx_new = {d.aggregate_id for d in batch if isinstance(d.event, PrescriptionIssued)}
        visit_new = {d.aggregate_id for d in batch if isinstance(d.event, FollowUpVisitRecorded)}
        visit_ids = {d.aggregate_id for d in batch if isinstance(d.event, ConsultationSettled)} - visit_new

        rxs: dict[UUID, RxRow] = {}
        if rx_ids - rx_new:
            cur = conn.execute(sql.SQL("SELECT {} FROM {}.prescriptions WHERE prescription_id = ANY(%s)").format(
                sql.SQL(", ").join(map(sql.Identifier, _RX_COLUMNS)), s), (list(rx_ids - rx_new),))
            for row in cur:
                rxs[row[0]] = RxRow(*row)
        visits: dict[UUID, VisitRow] = {}
        if visit_ids:
            cur = conn.execute(sql.SQL("SELECT {} FROM {}.visits WHERE encounter_id = ANY(%s)").format(
                sql.SQL(", ").join(map(sql.Identifier, _VISIT_COLUMNS)), s), (list(visit_ids),))
            for row in cur:
                visits[row[0]] = VisitRow(*row)

        steps: list[tuple[Any, ...]] = []
        routings: list[tuple[Any, ...]] = []
        uses: list[tuple[Any, ...]] = []
        withdrawals: list[tuple[Any, ...]] = []
        code_events: list[tuple[Any, ...]] = []
        flags: list[tuple[Any, ...]] = []
        changed_rx: set[UUID] = set()
        changed_visits: set[UUID] = set()

        for d in batch:
            e = d.event
            if isinstance(e, PrescriptionEvent):
                rx = rxs.get(d.aggregate_id)
                if rx is None:
                    rx = rxs[d.aggregate_id] = RxRow(d.aggregate_id)
                actor = self._fold_prescription(rx, d, routings, uses, withdrawals)
                changed_rx.add(d.aggregate_id)
                if isinstance(e, RuleFlagged):
                    flags.append((d.aggregate_id, d.version, e.rule_id, e.reason, d.timestamp, json.dumps(e.details)))
                steps.append((d.aggregate_id, d.version, d.aggregate_id, d.event_type, d.timestamp, actor,
                              d.event_id, e.hash, _details(e)))
            elif isinstance(e, FollowUpVisitRecorded):
                visits[d.aggregate_id] = VisitRow(
                    d.aggregate_id, e.hospital_id, e.physical_institution_id, e.pooling_region, e.business_type.value,
                    e.patient_ref, e.physician_id, e.diagnosis_code, e.diagnosis_name, e.original_diagnosis_code,
                    e.original_diagnosis_date, e.original_institution_id, e.verification_method.value,
                    e.consultation_fee, d.timestamp, None, d.version)
                changed_visits.add(d.aggregate_id)
                steps.append((d.aggregate_id, d.version, None, d.event_type, d.timestamp, e.physician_id,
                              d.event_id, e.hash, _details(e)))
            elif isinstance(e, ConsultationSettled):
                visit = visits.get(d.aggregate_id)
                if visit is not None:
                    visit.settled_at, visit.version = d.timestamp, d.version
                    changed_visits.add(d.aggregate_id)
                steps.append((d.aggregate_id, d.version, None, d.event_type, d.timestamp,
                              _agency(visit.pooling_region if visit else None), d.event_id, e.hash, _details(e)))
            elif isinstance(e, TraceCodeSold):
                code_events.append((d.aggregate_id, d.version, e.code, d.event_type, e.business_type.value,
                                    e.drug_code, e.seller_id, e.prescription_id, e.patient_ref, None, d.timestamp,
                                    d.event_id, _details(e)))
            elif isinstance(e, TraceCodeReturned):
                code_events.append((d.aggregate_id, d.version, e.code, d.event_type, e.business_type.value, None,
                                    None, e.prescription_id, None, e.reason, d.timestamp, d.event_id, _details(e)))

        with conn.cursor() as cur:
            if steps:
                with cur.copy(sql.SQL("COPY {}.steps (stream_id, version, prescription_id, step, at, actor, event_id,"
                                      " hash, details) FROM STDIN").format(s)) as copy:
                    for row in steps:
                        copy.write_row(row)
            if routings:
                with cur.copy(sql.SQL("COPY {}.routings (prescription_id, version, dispenser_kind, dispenser_id, at)"
                                      " FROM STDIN").format(s)) as copy:
                    for row in routings:
                        copy.write_row(row)
            if uses:
                with cur.copy(sql.SQL("COPY {}.trace_code_uses (code, prescription_id, dispense_no, line_no,"
                                      " drug_code, dispenser_id, patient_ref, at, event_id) FROM STDIN").format(s)
                              ) as copy:
                    for row in uses:
                        copy.write_row(row)
            if code_events:
                with cur.copy(sql.SQL("COPY {}.trace_code_events (stream_id, version, code, event_type, business_type,"
                                      " drug_code, seller_id, prescription_id, patient_ref, reason, at, event_id, details)"
                                      " FROM STDIN").format(s)) as copy:
                    for row in code_events:
                        copy.write_row(row)
            if flags:
                with cur.copy(sql.SQL("COPY {}.flags (prescription_id, version, rule_id, reason, at, details)"
                                      " FROM STDIN").format(s)) as copy:
                    for row in flags:
                        copy.write_row(row)
            if withdrawals:  # a whole dispense (code None) or returned packs of it (their codes)
                ids, nos, codes, ats, eids = (list(c) for c in zip(*withdrawals, strict=True))
                cur.execute(sql.SQL(
                    "UPDATE {s}.trace_code_uses u SET withdrawn_at = w.at, withdrawn_event_id = w.event_id"
                    " FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::timestamptz[], %s::text[])"
                    " AS w(rx, no, code, at, event_id)"
                    " WHERE u.prescription_id = w.rx AND u.dispense_no = w.no AND (w.code IS NULL OR u.code = w.code)"
                    " AND u.withdrawn_at IS NULL").format(s=s),
                    (ids, nos, codes, ats, eids))
        upsert_rows(conn, schema, "prescriptions", _RX_COLUMNS[:1], _RX_COLUMNS[1:],
                    [tuple(getattr(rxs[i], c) for c in _RX_COLUMNS) for i in changed_rx], _RX_TYPES)
        upsert_rows(conn, schema, "visits", _VISIT_COLUMNS[:1], _VISIT_COLUMNS[1:],
                    [tuple(getattr(visits[i], c) for c in _VISIT_COLUMNS) for i in changed_visits], _VISIT_TYPES)

    @staticmethod
    def _fold_prescription(rx: RxRow, d: Delivered, routings: list[tuple[Any, ...]], uses: list[tuple[Any, ...]],
                           withdrawals: list[tuple[Any, ...]]) -> str:
        """Apply one prescription event to its summary row; returns the step's actor."""
        e = d.event
        rx.version, rx.updated_at = d.version, d.timestamp
        rx.business_type = e.business_type.value
        if (status := _STATUS.get(type(e))) is not None:
            rx.status = status
        match e:
            case PrescriptionIssued():
                rx.encounter_id, rx.hospital_id = e.encounter_id, e.hospital_id
                rx.physical_institution_id, rx.pooling_region = e.physical_institution_id, e.pooling_region
                rx.patient_ref, rx.physician_id = e.patient_ref, e.physician_id
                rx.diagnosis_code, rx.diagnosis_name, rx.issued_at = e.diagnosis_code, e.diagnosis_name, d.timestamp
                return e.physician_id
            case PrescriptionApproved() | PrescriptionRejected():
                rx.pharmacist_id = e.pharmacist_id
                return e.pharmacist_id
            case PrescriptionRouted():
                rx.dispenser_kind, rx.dispenser_id = e.dispenser_kind.value, e.dispenser_id
                routings.append((d.aggregate_id, d.version, e.dispenser_kind.value, e.dispenser_id, d.timestamp))
                if e.basis is RoutingBasis.PATIENT_CHOICE:
                    return f"patient:{rx.patient_ref}" if rx.patient_ref else "patient"
                return "router"
            case PrescriptionAccepted() | PrescriptionReturned():
                return e.dispenser_id
            case PrescriptionDispensed():
                rx.status = "dispensed" if e.complete else "partially_dispensed"
                for line_no, line in enumerate(e.lines, 1):
                    rx.dispensed_quantity += line.quantity
                    for code in line.trace_codes:
                        uses.append((code, d.aggregate_id, e.dispense_no, line_no, line.drug_code, e.dispenser_id,
                                     rx.patient_ref, d.timestamp, d.event_id))
                return e.dispenser_id
            case DispenseWithdrawn():
                withdrawals.append((d.aggregate_id, e.dispense_no, None, d.timestamp, d.event_id))
                return rx.dispenser_id or "dispenser"
            case PacksReturned():
                withdrawals.extend((d.aggregate_id, e.dispense_no, code, d.timestamp, d.event_id)
                                   for code in e.trace_codes)
                return rx.dispenser_id or "dispenser"
            case DeliveryArranged() | PrescriptionDelivered():
                rx.delivery_enterprise_id = e.delivery_enterprise_id
                return e.delivery_enterprise_id
            case PrescriptionCollected():
                return rx.dispenser_id or "dispenser"
            case PrescriptionSettled():
                rx.settled_total = e.total
                return _agency(rx.pooling_region)
            case FeesRefusedInAudit():
                rx.refused = (rx.refused or 0) + e.amount
                return _agency(rx.pooling_region)
            case FeesClawedBack():
                rx.clawed_back = (rx.clawed_back or 0) + e.amount
                return _agency(rx.pooling_region)
            case PrescriptionCancelled():
                return e.cancelled_by
            case RuleFlagged():
                rx.flags += 1
                return "platform"
            case _:
                return "platform"

