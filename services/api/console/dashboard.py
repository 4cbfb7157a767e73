"""The regulator dashboard's figures, from the traceability projection's tables (read side, never the event log).

Per China day (UTC+8) and pooling region of the treatment: prescriptions issued; prescriptions settled and the money
of those settlements split into the insurance fund (统筹基金), personal accounts (个人账户) and self-pay (自费);
rule flags. Until the projection has created its tables the figures are empty (``psycopg.errors.UndefinedTable``
is the caller's to catch, as ``services.api.reads.Reads._read`` does)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

CHINA = "Asia/Shanghai"


def figures(conn: psycopg.Connection[Any], schema: str, since: datetime,
            region: str | None = None) -> list[dict[str, Any]]:
    """One row per (day, region) with any activity since ``since``: issued, settled, fund, personal_account,
    self_pay, total, flags (days as ``YYYY-MM-DD`` in China time; money as Decimal)."""
    s = sql.Identifier(schema)
    where_region = sql.SQL("AND p.pooling_region = %(region)s") if region else sql.SQL("")
    issued = sql.SQL(
        "SELECT (p.issued_at AT TIME ZONE %(tz)s)::date AS day, p.pooling_region AS region, count(*) AS n"
        " FROM {s}.prescriptions p WHERE p.issued_at >= %(since)s {r} GROUP BY 1, 2").format(s=s, r=where_region)
    settled = sql.SQL(
        "SELECT (st.at AT TIME ZONE %(tz)s)::date AS day, p.pooling_region AS region, count(*) AS n,"
        " sum((st.details->>'fund')::numeric) AS fund,"
        " sum((st.details->>'personal_account')::numeric) AS personal_account,"
        " sum((st.details->>'self_pay')::numeric) AS self_pay, sum((st.details->>'total')::numeric) AS total"
        " FROM {s}.steps st JOIN {s}.prescriptions p ON p.prescription_id = st.prescription_id"
        " WHERE st.step = 'PrescriptionSettled' AND st.at >= %(since)s {r} GROUP BY 1, 2").format(s=s, r=where_region)
    flags = sql.SQL(
        "SELECT (f.at AT TIME ZONE %(tz)s)::date AS day, p.pooling_region AS region, count(*) AS n"
        " FROM {s}.flags f JOIN {s}.prescriptions p ON p.prescription_id = f.prescription_id"
        " WHERE f.at >= %(since)s {r} GROUP BY 1, 2").format(s=s, r=where_region)
    params = {"tz": CHINA, "since": since, "region": region}
    zero = Decimal("0.00")
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(day: Any, reg: str | None) -> dict[str, Any]:
        key = (day.isoformat(), reg or "")
        return rows.setdefault(key, {"day": key[0], "region": key[1], "issued": 0, "settled": 0, "fund": zero,
                                     "personal_account": zero, "self_pay": zero, "total": zero, "flags": 0})

    for day, reg, n in conn.execute(issued, params).fetchall():
        row(day, reg)["issued"] = int(n)
    for day, reg, n, fund, personal, self_pay, total in conn.execute(settled, params).fetchall():
        r = row(day, reg)
        r.update(settled=int(n), fund=fund or zero, personal_account=personal or zero, self_pay=self_pay or zero,
                 total=total or zero)
    for day, reg, n in conn.execute(flags, params).fetchall():
        row(day, reg)["flags"] = int(n)
    return [rows[k] for k in sorted(rows)]


def known_regions(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The pooling regions any visit was treated in (the regions with an agency to settle with)."""
    rows = conn.execute(sql.SQL("SELECT DISTINCT pooling_region FROM {s}.visits WHERE pooling_region IS NOT NULL"
                                " ORDER BY 1").format(s=sql.Identifier(schema))).fetchall()
    return [str(r[0]) for r in rows]
