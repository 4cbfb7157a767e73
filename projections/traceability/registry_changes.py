"""Traceability of the registries (issue 13): who changed which registry fact when.

One row per registry event (``events.registries.RegistryEvent``) in ``<schema>.registry_changes``: the fact's kind
and business id (an institution, a physician, a drug, a region's list ...), the change (the event type), who made it
(``changed_by``), the day it holds from (``effective_from``), when it was recorded, and its details (the event's
business fields; patients only by their pseudonym). Indexed by fact, by who changed it, and in arrival order
(``seq``, the cursor of ``GET /registry/changes``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.contracts import private_fields
from events.registries import RegistryEvent
from projections.base import Delivered

_FACT: dict[str, tuple[str, str]] = {
    # event type prefix -> (fact kind, the field naming the fact on the creating event)
    "Institution": ("institution", "institution_id"),
    "Physician": ("physician", "physician_id"),
    "Pharmacist": ("pharmacist", "pharmacist_id"),
    "CooperationAgreement": ("pharmacist", "pharmacist_id"),
    "Pharmacy": ("pharmacy", "pharmacy_id"),
    "DeliveryEnterprise": ("delivery_enterprise", "enterprise_id"),
    "Patient": ("patient", "patient_ref"),
    "ChronicEntitlement": ("patient", "patient_ref"),
    "OffSiteFiling": ("patient", "patient_ref"),
    "Emergency": ("emergency_declarations", "region"),
    "Drug": ("drug", "drug_code"),
    "PaymentStandard": ("drug", "drug_code"),
    "PriceCap": ("drug", "drug_code"),
    "ChronicDisease": ("chronic_disease_list", "region"),
}
_KIND_BY_TYPE: dict[str, str] = {}


def fact_kind(event_type: str) -> str:
    if event_type not in _KIND_BY_TYPE:
        kind = next((k for prefix, (k, _) in sorted(_FACT.items(), key=lambda p: -len(p[0]))
                     if event_type.startswith(prefix)), "registry")
        _KIND_BY_TYPE[event_type] = kind
    return _KIND_BY_TYPE[event_type]


_KEY_FIELDS = {k: f for k, f in _FACT.values()}


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    for ddl in (
        ("CREATE TABLE IF NOT EXISTS {s}.registry_changes (aggregate_id uuid, version int, fact_kind text NOT NULL,"
         " fact_id text NOT NULL, change text NOT NULL, changed_by text NOT NULL, effective_from date,"
         " recorded_at timestamptz NOT NULL, event_id text NOT NULL, details jsonb NOT NULL,"
         " seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, PRIMARY KEY (aggregate_id, version))"),
        "CREATE INDEX IF NOT EXISTS registry_changes_fact ON {s}.registry_changes (fact_kind, fact_id, seq)",
        "CREATE INDEX IF NOT EXISTS registry_changes_by ON {s}.registry_changes (changed_by, seq)",
        ("CREATE TABLE IF NOT EXISTS {s}.registry_facts (aggregate_id uuid PRIMARY KEY, fact_kind text NOT NULL,"
         " fact_id text NOT NULL)"),
    ):
        conn.execute(sql.SQL(ddl).format(s=s))


def apply(conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
    """Record the registry events of ``batch`` (the others are not ours); a repeat of a (stream, version) is a no-op."""
    mine = [d for d in batch if isinstance(d.event, RegistryEvent)]
    if not mine:
        return
    s = sql.Identifier(schema)
    known: dict[UUID, tuple[str, str]] = {}
    for d in mine:
        kind = fact_kind(type(d.event).__name__)
        key = getattr(d.event, _KEY_FIELDS.get(kind, ""), None)
        if key is not None and d.aggregate_id not in known:
            known[d.aggregate_id] = (kind, str(key))
    missing = list({d.aggregate_id for d in mine} - set(known))
    if missing:
        cur = conn.execute(sql.SQL("SELECT aggregate_id, fact_kind, fact_id FROM {}.registry_facts"
                                   " WHERE aggregate_id = ANY(%s)").format(s), (missing,))
        for aggregate_id, kind, fact_id in cur:
            known[aggregate_id] = (kind, fact_id)
    rows = []
    for d in mine:
        e: RegistryEvent = d.event
        kind, fact_id = known.get(d.aggregate_id, (fact_kind(type(e).__name__), str(d.aggregate_id)))
        details = e.model_dump_json(exclude={"originator_id", "originator_version", "timestamp", "prev_hash", "hash",
                                             "schema_version", "changed_by", "effective_from",
                                             *private_fields(type(e))})
        rows.append((d.aggregate_id, d.version, kind, fact_id, type(e).__name__, e.changed_by, e.effective_from,
                     d.timestamp, d.event_id, json.loads(details)))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL(
            "INSERT INTO {}.registry_facts (aggregate_id, fact_kind, fact_id) VALUES (%s, %s, %s)"
            " ON CONFLICT (aggregate_id) DO NOTHING").format(s),
            [(a, k, f) for a, (k, f) in known.items()])
        cur.executemany(sql.SQL(
            "INSERT INTO {}.registry_changes (aggregate_id, version, fact_kind, fact_id, change, changed_by,"
            " effective_from, recorded_at, event_id, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (aggregate_id, version) DO NOTHING").format(s),
            [(*r[:-1], json.dumps(r[-1], ensure_ascii=False)) for r in rows])


def registry_changes(conn: psycopg.Connection[Any], schema: str, *, fact_kind: str | None = None,
                     fact_id: str | None = None, changed_by: str | None = None, changed_by_prefix: str | None = None,
                     after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Registry changes in arrival order after the cursor ``after``, filtered (indexed by fact and by who)."""
    where: list[sql.Composable] = [sql.SQL("seq > %s")]
    args: list[Any] = [after]
    for column, value in (("fact_kind", fact_kind), ("fact_id", fact_id), ("changed_by", changed_by)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            args.append(value)
    if changed_by_prefix is not None:
        where.append(sql.SQL("changed_by LIKE %s"))
        args.append(changed_by_prefix.replace("%", r"\%").replace("_", r"\_") + "%")
    cur = conn.execute(sql.SQL(
        "SELECT seq, fact_kind, fact_id, change, changed_by, effective_from, recorded_at, aggregate_id, version,"
        " event_id, details FROM {}.registry_changes WHERE {} ORDER BY seq LIMIT %s").format(
        sql.Identifier(schema), sql.SQL(" AND ").join(where)), (*args, limit))
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur]
