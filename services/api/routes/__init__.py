"""The parties' resources, one module per party kind, in the domain's words.

Each party's router is scoped to one party kind (its key's kind, else 403). Commands take the acting party's id from
the key, never from the body, and an optional ``Idempotency-Key`` header. ``health`` (ops) and ``rules`` (the rule
catalogue) need no key.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.api.routes import agency, findings, health, hospital, pharmacist, pharmacy, registry, regulator, rules

ROUTERS: tuple[APIRouter, ...] = (hospital.router, pharmacist.router, pharmacy.router, agency.router, regulator.router,
                                  findings.router, registry.router, rules.router, health.router)
