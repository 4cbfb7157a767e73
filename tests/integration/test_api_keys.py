from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from services.adapters.api_keys import (
    Party,
    PartyKind,
    authenticate,
    create_key,
    ensure_schema,
    parse_party,
    record_regulator_query,
    regulator_queries,
    revoke_key,
)
from tests.support import unique_id

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def test_key_authenticates_its_party_and_only_its_hash_is_stored(pg_url: str) -> None:
    hospital = Party(PartyKind.HOSPITAL, unique_id("H"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn)
        token = create_key(conn, hospital, NOW)
        found = authenticate(conn, token)
        assert found is not None and (found.kind, found.id) == (hospital.kind, hospital.id)
        secret = token.split("_", 2)[2]
        stored = conn.execute("SELECT secret_sha256 FROM api.keys WHERE key_id = %s", (found.key_id,)).fetchone()
        assert stored is not None and secret not in stored[0]
        assert authenticate(conn, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert authenticate(conn, "not-a-key") is None
        assert revoke_key(conn, found.key_id, NOW)
        assert authenticate(conn, token) is None


def test_regulator_queries_are_recorded_and_listed(pg_url: str) -> None:
    regulator = Party(PartyKind.REGULATOR, unique_id("REG"), key_id="k1")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn)
        record_regulator_query(conn, regulator, NOW, "GET", "/regulator/trails/x", "")
        rows = regulator_queries(conn, regulator_id=regulator.id)
    assert [(r["regulator_id"], r["path"]) for r in rows] == [(regulator.id, "/regulator/trails/x")]


@pytest.mark.parametrize("text", ["hospital", "nurse:N1", "hospital:", "hospital:H 1"])
def test_bad_party_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="KIND:ID"):
        parse_party(text)
