"""What a request depends on: the per-process runtime, the caller's credential and role, the idempotency key."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from services.adapters.api_keys import Party, PartyKind, authenticate, record_regulator_query
from services.api.errors import Refused, Unauthorized
from services.api.reads import Reads
from services.application import RxTrail
from services.application import commands as c
from services.application.access import Forbidden, Gate, scoped_command_id
from services.application.outcomes import Outcome

AUTH_CACHE_SECONDS = 5.0


@dataclass
class Runtime:
    """Everything a request needs, built once per process when the app starts."""

    application: RxTrail
    pool: ConnectionPool[Any]
    gate: Gate
    reads: Reads
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _auth_cache: dict[str, tuple[float, Party | None]] = field(default_factory=dict)
    _auth_lock: threading.Lock = field(default_factory=threading.Lock)

    def cached_party(self, token: str) -> tuple[bool, Party | None]:
        """``(True, party)`` when ``token`` was checked less than ``AUTH_CACHE_SECONDS`` ago, else ``(False,
        None)``: no I/O, so the event loop answers it without handing the request to a thread."""
        with self._auth_lock:
            hit = self._auth_cache.get(hashlib.sha256(token.encode()).hexdigest())
        if hit is not None and time.monotonic() - hit[0] < AUTH_CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def authenticate(self, token: str) -> Party | None:
        """Keys are checked in PostgreSQL; a result is reused for a few seconds (revocation takes that long)."""
        found, party = self.cached_party(token)
        if found:
            return party
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self.pool.connection() as conn:
            party = authenticate(conn, token)
        with self._auth_lock:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[digest] = (now, party)
        return party

    def execute(self, party: Party, command: c.Command) -> Outcome:
        """Check the party may send the command, apply it, and raise ``Refused`` unless it was accepted."""
        unit = self.application.unit_for(command)  # every aggregate the command needs, in one round trip
        self.gate.check(party, command, unit)
        outcome = self.application.handle(command, unit=unit)  # the same loaded state: each loaded once
        if not outcome.ok:
            raise Refused(outcome)
        return outcome


# The dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, and
# that hand-off (a queue put, a thread wake-up, a loop wake-up) cost more CPU than the request's own work in the
# dependencies; only the endpoint (the write, blocking psycopg) and a key not checked in the last few seconds go to
# a thread.


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer rx_...` (rxtrail keys create)")


async def current_party(
    rt: Annotated[Runtime, Depends(runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Party:
    if credentials is None:
        raise Unauthorized("missing Authorization: Bearer rx_... header")
    found, party = rt.cached_party(credentials.credentials)
    if not found:
        party = await run_in_threadpool(rt.authenticate, credentials.credentials)
    if party is None:
        raise Unauthorized("unknown, malformed or revoked API key")
    return party


def party_of(kind: PartyKind) -> Callable[[Party], Awaitable[Party]]:
    async def require(party: Annotated[Party, Depends(current_party)]) -> Party:
        if party.kind is not kind:
            raise Forbidden(party, f"use the {kind.value} interface")
        return party

    require.__name__ = f"require_{kind.value}"
    return require


def record_regulator_request(
    request: Request,
    rt: Annotated[Runtime, Depends(runtime)],
    party: Annotated[Party, Depends(party_of(PartyKind.REGULATOR))],
) -> Party:
    """Every regulator query is itself recorded (who, what, when) before it is answered."""
    with rt.pool.connection() as conn:
        record_regulator_query(conn, party, rt.clock(), request.method, request.url.path, request.url.query)
    return party


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=r"^[A-Za-z0-9_.:\-]{1,100}$",
           description="retrying with the same key returns the first outcome and records nothing new"),
]


def command_id(party: Party, key: str | None) -> str | None:
    """Keys are per party, so one party can never read another's outcome by guessing its key."""
    return scoped_command_id(party, key)


Rt = Annotated[Runtime, Depends(runtime)]
Hospital = Annotated[Party, Depends(party_of(PartyKind.HOSPITAL))]
Pharmacist = Annotated[Party, Depends(party_of(PartyKind.PHARMACIST))]
Pharmacy = Annotated[Party, Depends(party_of(PartyKind.PHARMACY))]
Agency = Annotated[Party, Depends(party_of(PartyKind.AGENCY))]
Regulator = Annotated[Party, Depends(record_regulator_request)]
RxId = Annotated[UUID, Path(description="prescription id")]
After = Annotated[int, Query(ge=0, le=2**62, description="cursor: return what comes after this position")]
Limit = Annotated[int, Query(ge=1, le=500)]
