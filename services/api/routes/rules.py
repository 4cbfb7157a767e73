"""The rule catalogue (``GET /rules``): every rule the platform enforces or flags, where it comes from, and the
parameter values this deployment uses. Public: it holds no data of any party, so no key is needed (a key, if sent,
is ignored)."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import models as m
from services.api.deps import Rt
from services.domain.rules import catalogue

router = APIRouter(tags=["rules"])


@router.get("/rules", response_model=list[m.RulePublic],
            summary="The rule catalogue: id, title, source, reject or flag, parameters (public, no key needed)")
def rules(rt: Rt) -> list[m.RulePublic]:
    return [m.RulePublic.model_validate(rule.model_dump(mode="json")) for rule in catalogue(rt.application.rules)]
