"""The settlement worker's state in PostgreSQL (schema ``settlement_worker``), written by the worker
(``services.workers.settlement``) in its consumer loop's transaction:

- ``patients``: R11 status from ``PatientSuspendedForFraud`` / ``PatientReinstated``;
- ``ledger``: one row per settled prescription or visit (patient, year, fund, personal account, deductible counted),
  whose sums per patient and year are the year-to-date figures — booked when the worker issues the command
  (``source = 'issued'``) and replaced by the settled event (``'event'``), which carries the deductible applied, so
  a rebuild from the events alone gives the same year-to-date figures;
- ``skipped``: triggers that called for no settlement, and refusals, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.base import ZERO

SCHEMA = "settlement_worker"


@dataclass
class Spent:
    """One patient's year so far: deductible counted, fund and personal account paid."""

    deductible: Decimal = ZERO
    fund: Decimal = ZERO
    personal_account: Decimal = ZERO


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.patients (status_id uuid PRIMARY KEY, patient_ref text NOT NULL,"
        " suspended boolean NOT NULL, until date)").format(s))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS patients_ref ON {}.patients (patient_ref)").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.ledger (aggregate_id uuid PRIMARY KEY, patient_ref text NOT NULL,"
        " year int NOT NULL, fund numeric(16,2) NOT NULL, personal_account numeric(16,2) NOT NULL,"
        " deductible numeric(16,2) NOT NULL DEFAULT 0, source text NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS ledger_patient_year ON {}.ledger (patient_ref, year)")
                 .format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.skipped (command_id text PRIMARY KEY, aggregate_id uuid NOT NULL,"
        " reason text NOT NULL, at timestamptz NOT NULL DEFAULT now())").format(s))


def suspend(conn: psycopg.Connection[Any], schema: str, status_id: UUID, patient_ref: str, until: date | None
            ) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {}.patients (status_id, patient_ref, suspended, until) VALUES (%s, %s, true, %s)"
        " ON CONFLICT (status_id) DO UPDATE SET suspended = true, until = EXCLUDED.until")
        .format(sql.Identifier(schema)), (status_id, patient_ref, until))


def reinstate(conn: psycopg.Connection[Any], schema: str, status_id: UUID) -> None:
    conn.execute(sql.SQL("UPDATE {}.patients SET suspended = false, until = NULL WHERE status_id = %s")
                 .format(sql.Identifier(schema)), (status_id,))


def record_settled(conn: psycopg.Connection[Any], schema: str,
                   rows: Sequence[tuple[UUID, str, int, Decimal, Decimal, Decimal | None]]) -> None:
    """``(aggregate_id, patient_ref, year, fund, personal_account, deductible_applied)`` of settled events: the
    ledger's figures, rebuilt from the events alone (``deductible_applied`` None: an event from before it was
    recorded, whose deductible the worker booked when it issued the command)."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(sql.SQL(
            "INSERT INTO {}.ledger (aggregate_id, patient_ref, year, fund, personal_account, deductible, source)"
            " VALUES (%s, %s, %s, %s, %s, coalesce(%s, 0), 'event') ON CONFLICT (aggregate_id) DO UPDATE SET"
            " patient_ref = EXCLUDED.patient_ref, year = EXCLUDED.year, fund = EXCLUDED.fund,"
            " personal_account = EXCLUDED.personal_account,"
            " deductible = CASE WHEN %s::numeric IS NULL THEN {}.ledger.deductible ELSE EXCLUDED.deductible END,"
            " source = 'event'").format(sql.Identifier(schema), sql.Identifier(schema)),
            [(*r, r[5]) for r in rows])


def book(conn: psycopg.Connection[Any], schema: str, aggregate_id: UUID, patient_ref: str, year: int, fund: Decimal,
         personal_account: Decimal, deductible: Decimal) -> None:
    """A settlement just issued, so the patient's next claim in the batch sees it."""
    conn.execute(sql.SQL(
        "INSERT INTO {}.ledger (aggregate_id, patient_ref, year, fund, personal_account, deductible, source)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'issued') ON CONFLICT (aggregate_id) DO UPDATE SET"
        " deductible = EXCLUDED.deductible").format(sql.Identifier(schema)),
        (aggregate_id, patient_ref, year, fund, personal_account, deductible))


def skip(conn: psycopg.Connection[Any], schema: str, command_id: str, aggregate_id: UUID, reason: str) -> None:
    conn.execute(sql.SQL("INSERT INTO {}.skipped (command_id, aggregate_id, reason) VALUES (%s, %s, %s)"
                         " ON CONFLICT (command_id) DO UPDATE SET reason = EXCLUDED.reason")
                 .format(sql.Identifier(schema)), (command_id, aggregate_id, reason[:2000]))


def year_to_date(conn: psycopg.Connection[Any], schema: str, year: int, patients: Iterable[str]) -> dict[str, Spent]:
    rows = conn.execute(sql.SQL(
        "SELECT patient_ref, sum(deductible), sum(fund), sum(personal_account) FROM {}.ledger"
        " WHERE year = %s AND patient_ref = ANY(%s) GROUP BY patient_ref").format(sql.Identifier(schema)),
        (year, list(patients))).fetchall()
    return {r[0]: Spent(r[1], r[2], r[3]) for r in rows}


def suspended(conn: psycopg.Connection[Any], schema: str, patients: Iterable[str], today: date) -> set[str]:
    """Which of these patients are suspended for fraud today (R11)."""
    rows = conn.execute(sql.SQL(
        "SELECT patient_ref FROM {}.patients WHERE patient_ref = ANY(%s) AND suspended"
        " AND (until IS NULL OR until >= %s)").format(sql.Identifier(schema)), (list(patients), today)).fetchall()
    return {r[0] for r in rows}


def reverse(conn: psycopg.Connection[Any], schema: str, rows: Sequence[tuple[UUID, Decimal, Decimal]]) -> None:
    """``(aggregate_id, fund, personal_account)`` of reversals: what the fund and the account got back no longer
    counts as paid this year (annual cap, account balance)."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(sql.SQL(
            "UPDATE {}.ledger SET fund = fund - %s, personal_account = personal_account - %s"
            " WHERE aggregate_id = %s").format(sql.Identifier(schema)), [(f, pa, i) for i, f, pa in rows])
