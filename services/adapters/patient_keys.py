"""Per-patient data keys in PostgreSQL (``services.application.ports.PatientKeyStore``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import ConnectionPool

from services.adapters.pool import CONNECT_TIMEOUT_S, POOL_TIMEOUT_S  # short waits while PostgreSQL is down
from services.application.privacy import PrivacyError


class PostgresPatientKeyStore:
    """Keys in ``patient_keys`` (created if missing), through a small connection pool. Nothing is cached:
    forgetting must take effect for every process at once."""

    CREATE = (
        "CREATE TABLE IF NOT EXISTS patient_keys ("
        " patient_ref text PRIMARY KEY,"
        " key_id text NOT NULL,"
        " key bytea NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    )

    def __init__(self, database_url: str, *, max_connections: int = 4) -> None:
        self.database_url = database_url
        self._pool = ConnectionPool(database_url, min_size=1, max_size=max_connections, timeout=POOL_TIMEOUT_S,
                                    check=ConnectionPool.check_connection, open=True, name="patient-keys",
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S})
        with self._pool.connection() as conn:
            conn.execute(self.CREATE)
        self._batch = threading.local()

    def close(self) -> None:
        self._pool.close()

    def keys_for_sealing(self, patient_refs: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """``key_for_sealing`` for many patients in one round trip (one statement: keys created where missing)."""
        refs = list(dict.fromkeys(patient_refs))
        if not refs:
            return {}
        fresh = [(os.urandom(8).hex(), AESGCM.generate_key(bit_length=256)) for _ in refs]
        get_or_create = (
            "WITH input AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[]) AS i(patient_ref, key_id, key)),"
            " created AS (INSERT INTO patient_keys (patient_ref, key_id, key) SELECT patient_ref, key_id, key"
            " FROM input ON CONFLICT (patient_ref) DO NOTHING RETURNING patient_ref, key_id, key)"
            " SELECT patient_ref, key_id, key FROM created"
            " UNION ALL SELECT k.patient_ref, k.key_id, k.key FROM patient_keys k JOIN input USING (patient_ref)"
        )
        with self._pool.connection() as conn:
            rows = conn.execute(get_or_create, (refs, [f[0] for f in fresh], [f[1] for f in fresh])).fetchall()
        found = {str(r[0]): (str(r[1]), bytes(r[2])) for r in rows}
        for ref in refs:  # a race with another first visit of the patient: read the winner's row
            if ref not in found:
                found[ref] = self.key_for_sealing(ref)
        return found

    @contextmanager
    def batch(self, patient_refs: Iterable[str]) -> Iterator[None]:
        """Within the block, in this thread, ``key_for_sealing`` answers these patients from one bulk read (a batch
        of visits costs one round trip, not one commit each). Nothing outlives the block."""
        self._batch.keys = self.keys_for_sealing(patient_refs)
        try:
            yield
        finally:
            self._batch.keys = {}

    def key_for_sealing(self, patient_ref: str) -> tuple[str, bytes]:
        if (held := getattr(self._batch, "keys", {}).get(patient_ref)) is not None:
            return held  # type: ignore[no-any-return]
        # One round trip whether the key is new or not. Under a race with another first visit of the same
        # patient the statement's snapshot can miss the winner's row; the plain SELECT then finds it.
        get_or_create = (
            "WITH created AS (INSERT INTO patient_keys (patient_ref, key_id, key) VALUES (%s, %s, %s) "
            " ON CONFLICT (patient_ref) DO NOTHING RETURNING key_id, key) "
            "SELECT key_id, key FROM created "
            "UNION ALL SELECT key_id, key FROM patient_keys WHERE patient_ref = %s LIMIT 1"
        )
        with self._pool.connection() as conn:
            row = conn.execute(
                get_or_create,
                (patient_ref, os.urandom(8).hex(), AESGCM.generate_key(bit_length=256), patient_ref),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT key_id, key FROM patient_keys WHERE patient_ref = %s", (patient_ref,)
                ).fetchone()
        if row is None:
            raise PrivacyError(f"no key could be created for patient {patient_ref}")
        return str(row[0]), bytes(row[1])

    def key(self, patient_ref: str, key_id: str) -> bytes | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT key FROM patient_keys WHERE patient_ref = %s AND key_id = %s", (patient_ref, key_id)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def forget(self, patient_ref: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute("DELETE FROM patient_keys WHERE patient_ref = %s", (patient_ref,)).rowcount
