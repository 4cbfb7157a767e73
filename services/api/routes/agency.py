"""Insurance agencies: the monthly statements of their pooling region, and audit refusals and clawbacks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.api import models as m
from services.api.deps import Agency, IdempotencyKey, Rt, RxId
from services.api.routes.common import ERRORS, prescription_public, run, rx_command
from services.application import commands as c

router = APIRouter(prefix="/agency", tags=["agency"], responses=ERRORS)


@router.get("/statements", response_model=m.StatementPage,
            summary="Monthly statements of the hospitals and pharmacies of this pooling region")
def statements(party: Agency, rt: Rt,
               month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None) -> m.StatementPage:
    return m.StatementPage(pooling_region=party.id, items=rt.reads.region_statements(party.id, month))


@router.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="A prescription of this pooling region")
def get_region_prescription(prescription_id: RxId, party: Agency, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@router.post("/prescriptions/{prescription_id}/audit-refusals", status_code=201,
             response_model=m.CommandResultPublic, summary="Refuse fees in audit")
def refuse_fees(prescription_id: RxId, body: m.AuditRefusalCreate, party: Agency, rt: Rt,
                key: IdempotencyKey = None) -> m.CommandResultPublic:
    return run(rt, party, rx_command(c.RefuseFeesInAudit, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/clawbacks", status_code=201, response_model=m.CommandResultPublic,
             summary="Claw back fees already paid for a violation")
def claw_back(prescription_id: RxId, body: m.ClawbackCreate, party: Agency, rt: Rt,
              key: IdempotencyKey = None) -> m.CommandResultPublic:
    return run(rt, party, rx_command(c.ClawBackFees, party, key, prescription_id, body))
