"""What the stages gave up on, read from the database for ``/health`` and ``rxtrail status``.

The relay records every stored event the broker refused (too large) in ``relay_dead_letters`` (written by
``services.relay.positions``) and moves past it; this module only reads it, so the API need not import the relay.
"""

from __future__ import annotations

from typing import Any

import psycopg

RELAY_TABLE = "relay_dead_letters"


def dead_letter_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """``{"relay": n}``: dead letters recorded per stage (0 when a stage never wrote any or its table is absent)."""
    counts = {"relay": 0}
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (RELAY_TABLE,)).fetchone()
    if row and row[0]:
        found = conn.execute("SELECT count(*) FROM relay_dead_letters").fetchone()
        counts["relay"] = int(found[0]) if found else 0
    return counts
