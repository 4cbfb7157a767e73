"""The write side: command handlers, idempotency, batches, reading trails — on ports, not on a database.

``RxTrail(store, vault)`` → ``app.handle(command) -> Outcome`` and ``app.apply_batch(commands) -> list[Outcome]``.
What it needs from outside is in ``ports`` (the event store, the patient key store, ...); ``services.adapters``
implements those and ``services.bootstrap.build_application(settings)`` wires one per process.
"""

from __future__ import annotations

from services.application.outcomes import EventRef, Outcome
from services.application.service import RxTrail

__all__ = ["EventRef", "Outcome", "RxTrail"]
