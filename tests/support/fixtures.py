"""Fixtures every test folder shares (registered in tests/conftest.py); a module's own fixture of the same name wins.

- ``database`` / ``application`` / ``cast``: per test module, a fresh database, the application built on it through
  the composition root, and the registered cast (for API, intake and end-to-end tests);
- ``store`` / ``vault`` / ``app``: the session database's store and patient vault, and an application on a fixed
  clock per test (for the application tests; a module needing other store options defines its own ``store``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.adapters.patient_keys import PostgresPatientKeyStore
from services.adapters.store import RxTrailStore, open_store
from services.application import RxTrail
from services.application.privacy import PatientVault
from tests.support.cast import SECRET, Cast, new_app
from tests.support.flows import open_application, register_cast


@pytest.fixture(scope="module")
def database(make_database: Callable[[], str]) -> str:
    """A database of this test module's own."""
    return make_database()


@pytest.fixture(scope="module")
def application(database: str) -> Iterator[RxTrail]:
    app = open_application(database)
    yield app
    app.close()


@pytest.fixture(scope="module")
def cast(application: RxTrail) -> Cast:
    return register_cast(application)


@pytest.fixture(scope="module")
def store(pg_url: str) -> Iterator[RxTrailStore]:
    s = open_store(pg_url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def vault(pg_url: str) -> PatientVault:
    return PatientVault(SECRET, PostgresPatientKeyStore(pg_url))


@pytest.fixture
def app(store: RxTrailStore, vault: PatientVault) -> RxTrail:
    return new_app(store, vault)
