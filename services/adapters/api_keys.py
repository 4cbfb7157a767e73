"""Per-party API keys, stored hashed, and the record of regulator queries.

A key reads `rx_<key id>_<secret>`; only sha256(secret) is stored, so a leaked table grants nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Any

import psycopg

from services.application.access import Party, PartyKind

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS api;
CREATE TABLE IF NOT EXISTS api.keys (
    key_id text PRIMARY KEY,
    secret_sha256 text NOT NULL,
    party_kind text NOT NULL,
    party_id text NOT NULL,
    label text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE TABLE IF NOT EXISTS api.regulator_queries (
    id bigserial PRIMARY KEY,
    regulator_id text NOT NULL,
    key_id text NOT NULL,
    at timestamptz NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    query text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS regulator_queries_by_regulator ON api.regulator_queries (regulator_id, at);
"""


_PARTY = re.compile(r"^(hospital|pharmacy|pharmacist|agency|regulator):([A-Za-z0-9_.\-]{1,64})$")
_TOKEN = re.compile(r"^rx_([a-f0-9]{16})_([A-Za-z0-9_\-]{20,100})$")


def parse_party(text: str) -> Party:
    """`hospital:H001`, `pharmacy:P001`, `pharmacist:PH01`, `agency:370100` (a pooling region), `regulator:R1`."""
    m = _PARTY.match(text.strip())
    if not m:
        raise ValueError(f"party must look like KIND:ID with KIND one of {', '.join(k.value for k in PartyKind)}; "
                         f"got {text!r}")
    return Party(PartyKind(m.group(1)), m.group(2))


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_SQL)  # type: ignore[arg-type]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: psycopg.Connection[Any], party: Party, now: datetime, label: str = "") -> str:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api.keys (key_id, secret_sha256, party_kind, party_id, label, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (key_id, _digest(secret), party.kind.value, party.id, label, now),
    )
    return f"rx_{key_id}_{secret}"


def revoke_key(conn: psycopg.Connection[Any], key_id: str, now: datetime) -> bool:
    cur = conn.execute("UPDATE api.keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                       (now, key_id))
    return cur.rowcount == 1


def authenticate(conn: psycopg.Connection[Any], token: str) -> Party | None:
    m = _TOKEN.match(token.strip())
    if not m:
        return None
    row = conn.execute(
        "SELECT secret_sha256, party_kind, party_id FROM api.keys WHERE key_id = %s AND revoked_at IS NULL",
        (m.group(1),),
    ).fetchone()
    if row is None or not hmac.compare_digest(row[0], _digest(m.group(2))):
        return None
    return Party(PartyKind(row[1]), row[2], key_id=m.group(1))


RECORDED_TEXT_MAX = 2048
"""At most this many characters of a query's path or query string are recorded (the rest: its length and digest)."""


def _escaped(ch: str) -> str:
    o = ord(ch)
    if ch == "\\":
        return "\\\\"
    if ch.isprintable() and not 0xD800 <= o <= 0xDFFF:
        return ch
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def recordable(text: str, limit: int = RECORDED_TEXT_MAX) -> str:
    """A form of ``text`` PostgreSQL's ``text`` always stores and a reader can trust: control characters (NUL
    above all, which ``text`` refuses) and lone surrogates UTF-8 cannot carry are escaped (``\x00``, ``\udc80``),
    a backslash is doubled so escapes stay unambiguous, and past ``limit`` characters the rest is replaced by the
    whole text's length and SHA-256 (the record names what was asked without storing megabytes of it)."""
    head = "".join(map(_escaped, text[:limit]))
    if len(text) <= limit and len(head) <= limit:
        return head
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{head[:limit]}... [{len(text)} characters, sha256 {digest}]"


def record_regulator_query(conn: psycopg.Connection[Any], party: Party, at: datetime, method: str, path: str,
                           query: str) -> None:
    """Record a regulator's query before it is answered. Any path or query string is recorded (odd input in a
    safe, bounded form: ``recordable``), so recording never refuses a request the API would answer."""
    conn.execute(
        "INSERT INTO api.regulator_queries (regulator_id, key_id, at, method, path, query) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (party.id, party.key_id, at, recordable(method, 32), recordable(path), recordable(query)),
    )


def regulator_queries(conn: psycopg.Connection[Any], limit: int = 100,
                      regulator_id: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, regulator_id, at, method, path, query FROM api.regulator_queries "
        "WHERE %s::text IS NULL OR regulator_id = %s ORDER BY id DESC LIMIT %s",
        (regulator_id, regulator_id, limit),
    ).fetchall()
    return [dict(zip(("id", "regulator_id", "at", "method", "path", "query"), r, strict=True)) for r in rows]
