"""Read the traceability view: a prescription's trail, and prescriptions by patient, physician, pharmacy or code.

Every query is answered from an index (primary keys on ``steps`` and ``prescriptions``; secondary indexes on
patient_ref, physician_id, routings.dispenser_id and the trace code columns).
"""

from __future__ import annotations

import json
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
