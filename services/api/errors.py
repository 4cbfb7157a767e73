"""The one place that picks HTTP status codes (STYLE rule 4: only this layer chooses them).

401 no or bad key · 403 the key's role may not do this · 404 unknown id, or an id the party may not see ·
405 a method the path does not take (``Allow`` lists those it takes) ·
409 a rule violation (``rule``), an illegal transition (``state``) or another business refusal ·
422 invalid input, naming the field · 503 PostgreSQL is down or restarting (``Retry-After``; a command's events
and outcome are written together or not at all, and retried with its Idempotency-Key it is applied once).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from services.adapters.pool import DATABASE_UNAVAILABLE, database_answers
from services.application.access import Forbidden, SenderMismatch
from services.application.outcomes import Outcome
from services.domain.errors import DomainError, IllegalTransition, NotFound, RuleViolation

ERROR_STATUS: dict[str, int] = {
    "RuleViolation": 409,
    "IllegalTransition": 409,
    "AlreadyExists": 409,
    "StaleVersion": 409,
    "ConcurrencyConflict": 409,
    "PartyNotEligible": 409,
    "ValidityElapsed": 409,
    "PatientForgotten": 409,
    "InvalidCommand": 422,
    "Forbidden": 403,
    "SenderMismatch": 403,
}
_STATE = re.compile(r"in state (\w+)$")
_NAMED_RULE = re.compile(r"\b(R\d{1,2}): ")
"""A field's message that names the rule it enforces (a trace code that is not 20 digits: R8)."""
RETRY_AFTER_S = 2
"""What a 503 tells the client to wait: PostgreSQL restarts in seconds, and the pools reconnect on their own."""
PROBE_INTERVAL_S = 0.5
log = logging.getLogger("rxtrail.api")


class DatabaseGate:
    """Fail fast while PostgreSQL is known to be down. The first requests to meet a lost database find out the
    slow way (the pools' short waits, about 3 s at most); from then on requests are answered 503 at once, and at
    most every ``PROBE_INTERVAL_S`` one request first probes the server with a fresh connection: once it answers,
    the gate opens and requests go through again (the pools replace their broken connections on their own)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.down = False
        self._next_probe = 0.0
        self._lock = threading.Lock()

    def mark_down(self) -> None:
        """After a request met the database unavailable: the next request probes at once (a lone error, e.g. a
        pool queue under load, costs one probe), and while probes fail the others are answered 503 at once."""
        with self._lock:
            if not self.down:
                self.down = True
                self._next_probe = time.monotonic()

    def _claim_probe(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + PROBE_INTERVAL_S
            return True

    def _probe(self) -> bool:
        if not database_answers(self.database_url):
            return False
        with self._lock:
            self.down = False
        log.info("the database answers again")
        return True

    async def passes(self) -> bool:
        """Whether a request may go on to the app (always while the database is not known to be down)."""
        if not self.down:
            return True
        if not self._claim_probe():
            return False
        return await run_in_threadpool(self._probe)


class FailFast:
    """ASGI middleware: 503 at once while the ``DatabaseGate`` is shut (``/health`` always goes through: it
    checks the database itself and says "degraded")."""

    def __init__(self, app: ASGIApp, gate: DatabaseGate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health" or await self.gate.passes():
            await self.app(scope, receive, send)
            return
        await unavailable_response()(scope, receive, send)


def unavailable_response() -> JSONResponse:
    return _error(503, "ServiceUnavailable", "the database is unavailable (down or restarting): retry later; a "
                  "command retried with its Idempotency-Key is applied once", headers={"Retry-After": str(RETRY_AFTER_S)})


def status_for(error: str | None) -> int:
    if error is None:
        return 409
    if error.endswith("NotFound"):
        return 404
    return ERROR_STATUS.get(error, 409)


class Unauthorized(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Refused(Exception):
    """A command came back rejected; carries the outcome (first outcome on a retried idempotency key)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        super().__init__(outcome.reason or outcome.error or "refused")


def _error(status: int, error: str, reason: str, headers: dict[str, str] | None = None, **extra: Any
           ) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "reason": reason}
    body.update({k: v for k, v in extra.items() if v is not None})
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers on this request's path: each method is matched the way the
    router would (routes of one path may be several, and included routers nest)."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


def outcome_response(outcome: Outcome) -> JSONResponse:
    reason = outcome.reason or outcome.error or "refused"
    extra: dict[str, Any] = {k: v for k, v in outcome.ids.items() if k not in {"error", "reason", "rule", "state"}}
    if outcome.error == "IllegalTransition" and (m := _STATE.search(reason)):
        extra["state"] = m.group(1)
    return _error(status_for(outcome.error), outcome.error or "Refused", reason, rule=outcome.rule_id,
                  command=outcome.command_type, **extra)


def _field_errors(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    fields = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in errors]
    return "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid input", fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return _error(401, "Unauthorized", exc.reason)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # an unreadable body (not UTF-8, not JSON): invalid input like any other
            return _error(422, "ValidationError", f"body: {exc.detail}")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        return _error(exc.status_code, "HTTPError", str(exc.detail), headers=headers or None)

    gate = DatabaseGate(app.state.database_url)
    app.state.database_gate = gate
    app.add_middleware(FailFast, gate=gate)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: 503, the database is unavailable (%s: %s)", request.method, request.url.path[:200],
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        gate.mark_down()
        return unavailable_response()

    for unavailable_error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable_error, unavailable)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return outcome_response(exc.outcome)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        reason, fields = _field_errors(exc.errors())
        named = _NAMED_RULE.search(reason)
        return _error(422, "ValidationError", reason, fields=fields, rule=named.group(1) if named else None)

    @app.exception_handler(ValidationError)
    async def invalid_command(_: Request, exc: ValidationError) -> JSONResponse:
        reason, fields = _field_errors(exc.errors(include_input=False))
        return _error(422, "ValidationError", reason, fields=fields)

    @app.exception_handler(ArithmeticError)
    async def out_of_range(_: Request, exc: ArithmeticError) -> JSONResponse:
        # decimal.InvalidOperation from events.base.to_money on amounts beyond 28 significant digits
        return _error(422, "ValidationError", "a number is out of range (money has at most 26 digits before the "
                                              "decimal point)")

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        name = type(exc).__name__
        ids = dict(getattr(exc, "ids", {}) or {})
        if isinstance(exc, NotFound):
            return _error(404, name, str(exc), key=exc.key)
        if isinstance(exc, Forbidden | SenderMismatch):
            return _error(403, name, exc.reason, **ids)
        rule = exc.rule_id if isinstance(exc, RuleViolation) else None
        state = exc.from_state if isinstance(exc, IllegalTransition) else None
        return _error(status_for(name), name, getattr(exc, "reason", None) or str(exc), rule=rule, state=state, **ids)
