"""The router's state in PostgreSQL (schema ``router``), written by the router worker (``services.workers.router``)
in its consumer loop's transaction: pharmacies with region, agreement state and drug list; prescriptions with region,
drugs, the patient's choice, who returned them and where they stand (``ISSUED`` ... ``CLOSED``). The choice itself
is ``services.domain.routing``; this module only stores what it needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from services.domain.routing import PharmacyInfo, RoutingRequest

SCHEMA = "router"

ISSUED = "issued"
AWAITING = "awaiting"
"""Approved (or returned) in this batch; a route is about to be asked for."""
UNROUTABLE = "unroutable"
"""No pharmacy was eligible; tried again when one is designated in the region."""
ROUTED = "routed"
HELD = "held"
"""The write side refused for a reason that is not the pharmacy's (cancelled, validity elapsed): left alone."""
CLOSED = "closed"
"""Rejected, cancelled or expired: the row is deleted."""


@dataclass
class RoutedPrescription:
    """A prescription as the router keeps it."""

    prescription_id: UUID
    pooling_region: str
    drug_codes: tuple[str, ...]
    preferred_pharmacy_id: str | None
    returned_by: tuple[str, ...] = ()
    status: str = ISSUED
    trigger_event_id: str | None = None
    """The approval or return being acted on: every command for it is keyed by this event."""
    attempts: int = 0
    """Commands already sent for the trigger (the next key's suffix)."""

    def request(self) -> RoutingRequest:
        return RoutingRequest(self.prescription_id, self.pooling_region, frozenset(self.drug_codes),
                              self.preferred_pharmacy_id, frozenset(self.returned_by))


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.pharmacies (aggregate_id uuid PRIMARY KEY, pharmacy_id text NOT NULL, "
        "pooling_region text NOT NULL, agreement_active boolean NOT NULL, drug_codes text[])").format(s))
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS pharmacies_by_region ON {}.pharmacies (pooling_region)").format(s))
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS pharmacies_by_id ON {}.pharmacies (pharmacy_id)").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, "
        "pooling_region text NOT NULL, drug_codes text[] NOT NULL, preferred_pharmacy_id text, "
        "returned_by text[] NOT NULL DEFAULT '{{}}', status text NOT NULL, trigger_event_id text, "
        "attempts int NOT NULL DEFAULT 0)").format(s))
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS prescriptions_unroutable ON {}.prescriptions (pooling_region) "
        "WHERE status = 'unroutable'").format(s))


_RX_COLUMNS = ("prescription_id, pooling_region, drug_codes, preferred_pharmacy_id, returned_by, status, "
               "trigger_event_id, attempts")
_PHARMACY_COLUMNS = "aggregate_id, pharmacy_id, pooling_region, agreement_active, drug_codes"


def _rx_row(r: Sequence[Any]) -> RoutedPrescription:
    return RoutedPrescription(r[0], r[1], tuple(r[2]), r[3], tuple(r[4]), r[5], r[6], r[7])


def load_prescriptions(conn: psycopg.Connection[Any], schema: str, ids: set[UUID]) -> dict[UUID, RoutedPrescription]:
    s = sql.Identifier(schema)
    if not ids:
        return {}
    rows = conn.execute(sql.SQL("SELECT " + _RX_COLUMNS + " FROM {}.prescriptions WHERE prescription_id = ANY(%s)")
                        .format(s), (list(ids),)).fetchall()
    return {r[0]: _rx_row(r) for r in rows}


def load_unroutable(conn: psycopg.Connection[Any], schema: str, regions: list[str], exclude: set[UUID]
                    ) -> dict[UUID, RoutedPrescription]:
    s = sql.Identifier(schema)
    rows = conn.execute(sql.SQL("SELECT " + _RX_COLUMNS + " FROM {}.prescriptions WHERE status = 'unroutable' "
                                "AND pooling_region = ANY(%s) ORDER BY prescription_id").format(s),
                        (regions,)).fetchall()
    return {r[0]: _rx_row(r) for r in rows if r[0] not in exclude}


def load_pharmacies(conn: psycopg.Connection[Any], schema: str, *, ids: set[UUID] | None = None,
                    regions: set[str] | None = None, pharmacy_ids: set[str] | None = None
                    ) -> dict[UUID, PharmacyInfo]:
    s = sql.Identifier(schema)
    if not (ids or regions or pharmacy_ids):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT " + _PHARMACY_COLUMNS + " FROM {}.pharmacies WHERE aggregate_id = ANY(%s) "
                "OR pooling_region = ANY(%s) OR pharmacy_id = ANY(%s)").format(s),
        (list(ids or ()), list(regions or ()), list(pharmacy_ids or ())),
    ).fetchall()
    return {r[0]: PharmacyInfo(r[1], r[2], r[3], None if r[4] is None else frozenset(r[4])) for r in rows}


def save_pharmacies(conn: psycopg.Connection[Any], schema: str, rows: Mapping[UUID, PharmacyInfo]) -> None:
    s = sql.Identifier(schema)
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {}.pharmacies (" + _PHARMACY_COLUMNS + ") VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (aggregate_id) DO UPDATE SET pharmacy_id = EXCLUDED.pharmacy_id, "
                    "pooling_region = EXCLUDED.pooling_region, agreement_active = EXCLUDED.agreement_active, "
                    "drug_codes = EXCLUDED.drug_codes").format(s),
            [(k, p.pharmacy_id, p.pooling_region, p.agreement_active,
              None if p.drug_codes is None else sorted(p.drug_codes)) for k, p in rows.items()],
        )


def save_prescriptions(conn: psycopg.Connection[Any], schema: str, rows: Sequence[RoutedPrescription]) -> None:
    s = sql.Identifier(schema)
    closed = [rx.prescription_id for rx in rows if rx.status == CLOSED]
    kept = [rx for rx in rows if rx.status != CLOSED]
    if closed:
        conn.execute(sql.SQL("DELETE FROM {}.prescriptions WHERE prescription_id = ANY(%s)").format(s), (closed,))
    if kept:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {}.prescriptions (" + _RX_COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (prescription_id) DO UPDATE SET returned_by = EXCLUDED.returned_by, "
                        "status = EXCLUDED.status, trigger_event_id = EXCLUDED.trigger_event_id, "
                        "attempts = EXCLUDED.attempts").format(s),
                [(rx.prescription_id, rx.pooling_region, list(rx.drug_codes), rx.preferred_pharmacy_id,
                  list(rx.returned_by), rx.status, rx.trigger_event_id, rx.attempts) for rx in kept],
            )
