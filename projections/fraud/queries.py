"""Read the fraud findings: a filtered page (cursor = the row's ``seq``), one finding, and the findings that concern a
party, a patient pseudonym, a prescription or a trace code. Every filter is answered from an index."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

DEFAULT_SCHEMA = "fraud"

_COLUMNS = ("seq, finding_id, pattern, rule_id, severity, subject, parties, patient_ref, prescription_ids,"
            " explanation, first_at, last_at, evidence")


def _row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("evidence"), str):
        out["evidence"] = json.loads(out["evidence"])
    out["parties"] = list(out.get("parties") or ())
    out["prescription_ids"] = list(out.get("prescription_ids") or ())
    return out


def finding_page(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA, *, after: int = 0, limit: int = 50,
                 pattern: str | None = None, rule_id: str | None = None, severity: str | None = None,
                 party: str | None = None, patient_ref: str | None = None,
                 prescription_id: UUID | str | None = None, subject: str | None = None) -> list[dict[str, Any]]:
    """Findings matching every given filter, in the order first recorded (``seq`` > ``after``). ``party``: as the
    finding names it (``physician:X``, ``pharmacy:Y``, ``hospital:H``, ``patient:<ref>``, ``address:<ref>``);
    ``subject``: a trace code, a physician / dispenser id, … (the finding's own key, before any ``|``)."""
    conds: list[sql.Composable] = [sql.SQL("seq > %s")]
    args: list[Any] = [after]
    for column, value in (("pattern", pattern), ("rule_id", rule_id), ("severity", severity),
                          ("patient_ref", patient_ref)):
        if value is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            args.append(value)
    if party is not None:
        conds.append(sql.SQL("parties @> ARRAY[%s]::text[]"))
        args.append(party)
    if prescription_id is not None:
        conds.append(sql.SQL("prescription_ids @> ARRAY[%s]::uuid[]"))
        args.append(UUID(str(prescription_id)))
    if subject is not None:
        conds.append(sql.SQL("split_part(subject, '|', 1) = %s"))
        args.append(subject)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT " + _COLUMNS + " FROM {}.findings WHERE {} ORDER BY seq LIMIT %s").format(
            sql.Identifier(schema), sql.SQL(" AND ").join(conds)), (*args, limit))
        return [_row(r) for r in cur.fetchall()]


def finding(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA, finding_id: str = "") -> dict[str, Any] | None:
    """One finding by id (None when unknown)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT " + _COLUMNS + " FROM {}.findings WHERE finding_id = %s").format(
            sql.Identifier(schema)), (finding_id,))
        row = cur.fetchone()
    return _row(row) if row is not None else None


def by_trace_code(conn: psycopg.Connection[Any], schema: str, code: str) -> list[dict[str, Any]]:
    """Findings about one trace code (repeated attempts, double sales)."""
    return finding_page(conn, schema, subject=code, limit=1000)


def refused_attempts(conn: psycopg.Connection[Any], schema: str, code: str) -> list[dict[str, Any]]:
    """Every refused attempt (R8 ``RuleFlagged``) to sell this trace code, oldest first: the prescription that
    attempted it, its dispenser, when, and the event that records it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL(
            "SELECT f.prescription_id AS aggregate_id, f.version, f.at, f.event_id, r.dispenser_id, r.patient_ref"
            " FROM {s}.flags f LEFT JOIN {s}.rx r USING (prescription_id) WHERE f.trace_code = %s"
            " ORDER BY f.at, f.prescription_id, f.version").format(s=sql.Identifier(schema)), (code,))
        return cur.fetchall()


def exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether the projection's findings table exists in ``schema`` (an as-of replay makes its own schema)."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.findings",)).fetchone()
    return bool(row and row[0])


def code_events(conn: psycopg.Connection[Any], schema: str, code: str) -> list[dict[str, Any]]:
    """The sales and returns recorded on one trace code's own stream, oldest first (with their stream id, version
    and event id, so they can be proven)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL(
            "SELECT stream_id AS aggregate_id, version, event_type, seller_id, prescription_id, at, event_id"
            " FROM {}.code_events WHERE code = %s ORDER BY at, stream_id, version").format(sql.Identifier(schema)),
            (code,))
        return cur.fetchall()
