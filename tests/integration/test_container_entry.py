"""The container entry points of deploy/compose.yaml: `python -m services.infra.container prepare` (db-init) makes the
shared tables on an empty database, and `... health [--api]` (every stage's health check) answers 0 only when the
parts answer."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from services.infra import container
from services.infra.ports import free_ports


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, bootstrap: str) -> None:
    for name, value in {"RXTRAIL_DATABASE_URL": database_url, "RXTRAIL_KAFKA_BOOTSTRAP": bootstrap,
                        "RXTRAIL_PSEUDONYM_SECRET": "container-entry-test", "RXTRAIL_DATA_DIR": str(tmp_path),
                        "RXTRAIL_API_HOST": "127.0.0.1", "RXTRAIL_API_PORT": str(free_ports(1)[0])}.items():
        monkeypatch.setenv(name, value)


def test_prepare_makes_the_shared_tables(make_database, kafka_bootstrap: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    database_url = make_database()
    _env(monkeypatch, tmp_path, database_url, kafka_bootstrap)
    assert container.main(["prepare"]) == 0
    with psycopg.connect(database_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"rxtrail_events", "rxtrail_stage_health"} <= tables, tables
    assert container.main(["prepare"]) == 0  # again: nothing to do, no error


def test_health_answers_what_answers(pg_url: str, kafka_bootstrap: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, pg_url, kafka_bootstrap)
    assert container.main(["health", "--timeout", "5"]) == 0
    assert container.main(["health", "--api", "--timeout", "2"]) == 1  # nothing listens on the API port
    assert "api:" in capsys.readouterr().err
    _env(monkeypatch, tmp_path, pg_url, f"127.0.0.1:{free_ports(1)[0]}")  # no broker there
    assert container.main(["health", "--timeout", "2"]) == 1
    assert "kafka:" in capsys.readouterr().err
