"""Pieces both settlement projections share: the settlement month, money sums, bulk upserts of monthly deltas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
ZERO = Decimal("0.00")


def settlement_month(at: datetime) -> str:
    """The month an event is settled in: its calendar month in China Standard Time (UTC+8, no DST)."""
    return at.astimezone(CHINA_STANDARD_TIME).strftime("%Y-%m")


def add_deltas(conn: psycopg.Connection[Any], schema: str, table: str, key_columns: Sequence[str],
               sum_columns: Sequence[str], rows: Sequence[Sequence[Any]], types: Sequence[str]) -> None:
    """One statement: ``INSERT … SELECT unnest(…) ON CONFLICT (key) DO UPDATE SET c = c + EXCLUDED.c``.

    ``rows`` hold the key values then the deltas, in column order; ``types`` are their PostgreSQL types.
    """
    if not rows:
        return
    columns = [*key_columns, *sum_columns]
    target = sql.Identifier(schema, table)
    arrays = [list(col) for col in zip(*rows, strict=True)]
    stmt = sql.SQL(
        "INSERT INTO {target} AS t ({cols}) SELECT * FROM unnest({params}) "
        "ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    ).format(
        target=target,
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types),
        keys=sql.SQL(", ").join(map(sql.Identifier, key_columns)),
        updates=sql.SQL(", ").join(
            sql.SQL("{c} = t.{c} + EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in sum_columns),
    )
    conn.execute(stmt, arrays)


def upsert_rows(conn: psycopg.Connection[Any], schema: str, table: str, key_columns: Sequence[str],
                value_columns: Sequence[str], rows: Sequence[Sequence[Any]], types: Sequence[str]) -> None:
    """One statement: insert whole rows, replacing the value columns of rows already there."""
    if not rows:
        return
    columns = [*key_columns, *value_columns]
    arrays = [list(col) for col in zip(*rows, strict=True)]
    stmt = sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT * FROM unnest({params}) "
        "ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    ).format(
        target=sql.Identifier(schema, table),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types),
        keys=sql.SQL(", ").join(map(sql.Identifier, key_columns)),
        updates=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in value_columns),
    )
    conn.execute(stmt, arrays)


def select_view(conn: psycopg.Connection[Any], schema: str, view: str, order: Sequence[str],
                filters: dict[str, str | None]) -> list[dict[str, Any]]:
    """Rows of a statements view as dicts, equality-filtered on the non-None ``filters``."""
    from psycopg.rows import dict_row

    wanted = {k: v for k, v in filters.items() if v is not None}
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in wanted) \
        if wanted else sql.SQL("true")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {} WHERE {} ORDER BY {}").format(
            sql.Identifier(schema, view), where, sql.SQL(", ").join(map(sql.Identifier, order))),
            list(wanted.values()))
        return cur.fetchall()
