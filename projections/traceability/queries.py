"""Read the traceability view: a prescription's trail, and prescriptions by patient, physician, pharmacy or code.

Every query is answered from an index (primary keys on ``steps`` and ``prescriptions``; secondary indexes on
patient_ref, physician_id, routings.dispenser_id and the trace code columns).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

DEFAULT_SCHEMA = "traceability"

_SUMMARY = ("prescription_id, encounter_id, hospital_id, physical_institution_id, business_type, patient_ref,"
            " physician_id, diagnosis_code, diagnosis_name, pharmacist_id, dispenser_kind, dispenser_id,"
            " delivery_enterprise_id, status, dispensed_quantity, settled_total, refused, clawed_back, flags,"
            " issued_at, updated_at, version")


@dataclass(frozen=True)
class Step:
    """One event in a trail: what happened, when, who did it, and the event's id and hash."""

    at: datetime
    step: str
    actor: str
    event_id: str
    stream_id: UUID
    version: int
    hash: str
    details: dict[str, Any]


def trail(conn: psycopg.Connection[Any], schema: str, rx_id: UUID | str) -> list[Step]:
    """The whole trail of one prescription, oldest first: its visit's steps, then its own (empty if unknown)."""
    s = sql.Identifier(schema)
    rows = conn.execute(sql.SQL(
        "SELECT at, step, actor, event_id, stream_id, version, hash, details, 0 AS own FROM {s}.steps"
        " WHERE stream_id = (SELECT encounter_id FROM {s}.prescriptions WHERE prescription_id = %(rx)s)"
        " UNION ALL"
        " SELECT at, step, actor, event_id, stream_id, version, hash, details, 1 FROM {s}.steps"
        " WHERE stream_id = %(rx)s"
        " ORDER BY at, own, version").format(s=s), {"rx": UUID(str(rx_id))}).fetchall()
    return [Step(at, step, actor, event_id, stream_id, version, hash_,
                 details if isinstance(details, dict) else json.loads(details))
            for at, step, actor, event_id, stream_id, version, hash_, details, _ in rows]


def prescription(conn: psycopg.Connection[Any], schema: str, rx_id: UUID | str
                 ) -> dict[str, Any] | None:
    """The current summary of one prescription."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT " + _SUMMARY + " FROM {}.prescriptions WHERE prescription_id = %s").format(
            sql.Identifier(schema)), (UUID(str(rx_id)),))
        return cur.fetchone()


def _summaries(conn: psycopg.Connection[Any], query: sql.Composed, params: tuple[Any, ...] | dict[str, Any]
               ) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def by_patient(conn: psycopg.Connection[Any], schema: str, patient_ref: str, *,
               limit: int = 1000) -> list[dict[str, Any]]:
    """Prescriptions of one patient pseudonym, newest first."""
    return _summaries(conn, sql.SQL("SELECT " + _SUMMARY + " FROM {}.prescriptions WHERE patient_ref = %s"
                                    " ORDER BY issued_at DESC LIMIT %s").format(sql.Identifier(schema)),
                      (patient_ref, limit))


def visits_by_patient(conn: psycopg.Connection[Any], schema: str, patient_ref: str, *,
                      limit: int = 1000) -> list[dict[str, Any]]:
    """Follow-up visits of one patient pseudonym (with the original diagnosis), newest first."""
    return _summaries(conn, sql.SQL("SELECT * FROM {}.visits WHERE patient_ref = %s ORDER BY visited_at DESC"
                                    " LIMIT %s").format(sql.Identifier(schema)), (patient_ref, limit))


def by_physician(conn: psycopg.Connection[Any], schema: str, physician_id: str, *,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Prescriptions a physician issued, newest first."""
    return _summaries(conn, sql.SQL("SELECT " + _SUMMARY + " FROM {}.prescriptions WHERE physician_id = %s"
                                    " ORDER BY issued_at DESC LIMIT %s").format(sql.Identifier(schema)),
                      (physician_id, limit))


def by_pharmacy(conn: psycopg.Connection[Any], schema: str, pharmacy_id: str, *,
                limit: int = 1000) -> list[dict[str, Any]]:
    """Prescriptions ever routed to a pharmacy (including ones it returned), most recently routed first."""
    s = sql.Identifier(schema)
    return _summaries(conn, sql.SQL(
        "SELECT " + ", ".join(f"p.{c.strip()}" for c in _SUMMARY.split(",")) + ", r.routed_at"
        " FROM (SELECT prescription_id, max(at) AS routed_at FROM {s}.routings WHERE dispenser_id = %s"
        " GROUP BY prescription_id ORDER BY routed_at DESC LIMIT %s) r"
        " JOIN {s}.prescriptions p USING (prescription_id) ORDER BY r.routed_at DESC").format(s=s),
        (pharmacy_id, limit))


def by_trace_code(conn: psycopg.Connection[Any], schema: str, code: str) -> list[dict[str, Any]]:
    """Which sale used this trace code: every dispense that scanned it and every sale or return recorded on the
    code's own stream (offline sales too), oldest first. More than one live sale is the R8 fraud signal."""
    s = sql.Identifier(schema)
    return _summaries(conn, sql.SQL(
        "SELECT 'dispensed' AS source, at, prescription_id, dispense_no, drug_code, dispenser_id AS seller_id,"
        " patient_ref, NULL AS business_type, event_id, withdrawn_at, withdrawn_event_id"
        " FROM {s}.trace_code_uses WHERE code = %(code)s"
        " UNION ALL"
        " SELECT event_type, at, prescription_id, NULL, drug_code, seller_id, patient_ref, business_type, event_id,"
        " NULL, NULL FROM {s}.trace_code_events WHERE code = %(code)s"
        " ORDER BY at, source").format(s=s), {"code": code})


# --- pages for the API (cursor = the row's ``seq``; every filter and the order come from one index) ------------


def prescription_page(conn: psycopg.Connection[Any], schema: str, *, after: int, limit: int,
                      hospital_id: str | None = None, patient_ref: str | None = None,
                      physician_id: str | None = None, pharmacy_id: str | None = None,
                      trace_code: str | None = None) -> list[tuple[int, UUID]]:
    """(seq, prescription id) of the prescriptions matching every given criterion, after ``after``, in seq order.
    ``pharmacy_id``: ever routed to that pharmacy; ``trace_code``: a pack with that code was sold on it."""
    s = sql.Identifier(schema)
    conds: list[sql.Composable] = [sql.SQL("p.seq > %s")]
    args: list[Any] = [after]
    for column, value in (("hospital_id", hospital_id), ("patient_ref", patient_ref), ("physician_id", physician_id)):
        if value is not None:
            conds.append(sql.SQL("p.{} = %s").format(sql.Identifier(column)))
            args.append(value)
    if pharmacy_id is not None:
        conds.append(sql.SQL("p.prescription_id IN (SELECT prescription_id FROM {}.routings WHERE dispenser_id = %s)")
                     .format(s))
        args.append(pharmacy_id)
    if trace_code is not None:
        conds.append(sql.SQL("p.prescription_id IN (SELECT prescription_id FROM {}.trace_code_events"
                             " WHERE code = %s AND event_type = 'TraceCodeSold')").format(s))
        args.append(trace_code)
    rows = conn.execute(sql.SQL("SELECT p.seq, p.prescription_id FROM {}.prescriptions p WHERE {}"
                                " ORDER BY p.seq LIMIT %s").format(s, sql.SQL(" AND ").join(conds)),
                        (*args, limit)).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def to_review_page(conn: psycopg.Connection[Any], schema: str, *, hospital_id: str | None, after: int, limit: int
                   ) -> list[tuple[int, UUID, datetime]]:
    """(seq, prescription id, issued at) of prescriptions still waiting for review (status issued), of one hospital
    (or of every hospital: ``hospital_id`` None), in seq order."""
    s = sql.Identifier(schema)
    hospital = sql.SQL("AND hospital_id = %s") if hospital_id is not None else sql.SQL("")
    args = (after, *((hospital_id,) if hospital_id is not None else ()), limit)
    rows = conn.execute(sql.SQL("SELECT seq, prescription_id, issued_at FROM {}.prescriptions"
                                " WHERE status = 'issued' AND seq > %s {} ORDER BY seq LIMIT %s").format(s, hospital),
                        args).fetchall()
    return [(int(r[0]), r[1], r[2]) for r in rows]


def visit_page(conn: psycopg.Connection[Any], schema: str, *, hospital_id: str, after: int, limit: int
               ) -> list[tuple[int, UUID]]:
    """(seq, encounter id) of one hospital's follow-up visits, in seq order."""
    rows = conn.execute(sql.SQL("SELECT seq, encounter_id FROM {}.visits WHERE hospital_id = %s AND seq > %s"
                                " ORDER BY seq LIMIT %s").format(sql.Identifier(schema)),
                        (hospital_id, after, limit)).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def region_hospitals(conn: psycopg.Connection[Any], schema: str, pooling_region: str) -> set[str]:
    """Hospitals with follow-up visits in a pooling region."""
    rows = conn.execute(sql.SQL("SELECT DISTINCT hospital_id FROM {}.visits WHERE pooling_region = %s").format(
        sql.Identifier(schema)), (pooling_region,)).fetchall()
    return {r[0] for r in rows if r[0]}


def flag_page(conn: psycopg.Connection[Any], schema: str, *, rule_id: str | None, after: int, limit: int
              ) -> list[dict[str, Any]]:
    """Rule flags (of one rule, or all), in the order recorded here: seq, prescription_id, version, rule_id, reason,
    at, details."""
    rule = sql.SQL("AND rule_id = %s") if rule_id is not None else sql.SQL("")
    args = (after, *((rule_id,) if rule_id is not None else ()), limit)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT seq, prescription_id, version, rule_id, reason, at, details FROM {}.flags"
                            " WHERE seq > %s {} ORDER BY seq LIMIT %s").format(sql.Identifier(schema), rule), args)
        return cur.fetchall()


@dataclass(frozen=True)
class TrailEvent:
    """One event of a prescription's trail with its business fields (no chain fields, nothing sealed)."""

    aggregate_id: UUID
    aggregate_type: str  # Encounter, Prescription or TraceCode
    version: int
    event_type: str
    at: datetime
    data: dict[str, Any]


def trail_events(conn: psycopg.Connection[Any], schema: str, rx_id: UUID, encounter_id: UUID,
                 codes: Sequence[str] = ()) -> list[TrailEvent]:
    """The visit's and the prescription's events, and the sales and returns of its packs' trace codes (``codes``
    plus any sold on it; a code's events for other prescriptions are left out), in time order."""
    s = sql.Identifier(schema)
    rows = conn.execute(sql.SQL(
        "SELECT stream_id, 'Encounter', version, step, at, details FROM {s}.steps WHERE stream_id = %(enc)s"
        " UNION ALL"
        " SELECT stream_id, 'Prescription', version, step, at, details FROM {s}.steps WHERE stream_id = %(rx)s"
        " UNION ALL"
        " SELECT stream_id, 'TraceCode', version, event_type, at, coalesce(details, '{{}}'::jsonb)"
        " FROM {s}.trace_code_events WHERE code IN (SELECT unnest(%(codes)s::text[])"
        "   UNION SELECT code FROM {s}.trace_code_events WHERE prescription_id = %(rx)s)"
        " AND (prescription_id IS NULL OR prescription_id = %(rx)s)").format(s=s),
        {"enc": encounter_id, "rx": rx_id, "codes": list(codes)}).fetchall()
    events = [TrailEvent(r[0], r[1], int(r[2]), r[3], r[4], r[5] if isinstance(r[5], dict) else json.loads(r[5]))
              for r in rows]
    events.sort(key=lambda e: (e.at, e.aggregate_type != "Encounter", e.version))
    return events
