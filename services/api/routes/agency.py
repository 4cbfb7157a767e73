"""Insurance agencies: the monthly statements of their pooling region, audit refusals and clawbacks (drug and
consultation fees), reversals, and the queue of settlements that failed (retry or write off)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query

from events.statement import SubjectKind
from services.api import models as m
from services.api.deps import Agency, IdempotencyKey, Rt, RxId, command_id
from services.api.routes.common import ERRORS, prescription_public, run, rx_command
from services.application import commands as c

router = APIRouter(prefix="/agency", tags=["agency"], responses=ERRORS)

VisitId = Annotated[UUID, Path(description="visit (encounter) id")]


def _acting(party: Agency) -> str:
    return f"agency:{party.id}"


@router.get("/statements", response_model=m.StatementPage,
            summary="Monthly statements of the institutions, pharmacies and delivery enterprises of this region")
def statements(party: Agency, rt: Rt,
               month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None) -> m.StatementPage:
    return m.StatementPage(pooling_region=party.id, items=rt.reads.region_statements(party.id, month))


@router.get("/settlement-issues", response_model=m.SettlementIssuePage,
            summary="Settlements that failed (rule id, reason), to retry or write off")
def settlement_issues(party: Agency, rt: Rt,
                      include_resolved: Annotated[bool, Query(description="also the resolved ones")] = False
                      ) -> m.SettlementIssuePage:
    return m.SettlementIssuePage(pooling_region=party.id,
                                 items=rt.reads.settlement_issues(party.id, open_only=not include_resolved))


async def _resolve(cls: type[c.RetrySettlement | c.WriteOffSettlement], kind: SubjectKind, subject_id: UUID,
                   body: m.SettlementRetryCreate | m.SettlementWriteOffCreate, party: Agency, rt: Rt,
                   key: str | None) -> m.CommandResultPublic:
    return await run(rt, party, cls(command_id=command_id(party, key), subject_kind=kind, subject_id=subject_id,
                                    acted_by=_acting(party), **body.model_dump()))


@router.post("/prescriptions/{prescription_id}/settlement-retry", status_code=201,
             response_model=m.CommandResultPublic, summary="Retry a prescription's failed settlement")
async def retry_prescription(prescription_id: RxId, body: m.SettlementRetryCreate, party: Agency, rt: Rt,
                             key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await _resolve(c.RetrySettlement, SubjectKind.PRESCRIPTION, prescription_id, body, party, rt, key)


@router.post("/prescriptions/{prescription_id}/settlement-write-off", status_code=201,
             response_model=m.CommandResultPublic, summary="Write off a prescription's failed settlement")
async def write_off_prescription(prescription_id: RxId, body: m.SettlementWriteOffCreate, party: Agency, rt: Rt,
                                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await _resolve(c.WriteOffSettlement, SubjectKind.PRESCRIPTION, prescription_id, body, party, rt, key)


@router.post("/visits/{visit_id}/settlement-retry", status_code=201,
             response_model=m.CommandResultPublic, summary="Retry a consultation's failed settlement")
async def retry_consultation(visit_id: VisitId, body: m.SettlementRetryCreate, party: Agency, rt: Rt,
                             key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await _resolve(c.RetrySettlement, SubjectKind.CONSULTATION, visit_id, body, party, rt, key)


@router.post("/visits/{visit_id}/settlement-write-off", status_code=201,
             response_model=m.CommandResultPublic, summary="Write off a consultation's failed settlement")
async def write_off_consultation(visit_id: VisitId, body: m.SettlementWriteOffCreate, party: Agency, rt: Rt,
                                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await _resolve(c.WriteOffSettlement, SubjectKind.CONSULTATION, visit_id, body, party, rt, key)


@router.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="A prescription of this pooling region")
def get_region_prescription(prescription_id: RxId, party: Agency, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@router.post("/prescriptions/{prescription_id}/audit-refusals", status_code=201,
             response_model=m.CommandResultPublic, summary="Refuse fees in audit")
async def refuse_fees(prescription_id: RxId, body: m.AuditRefusalCreate, party: Agency, rt: Rt,
                      key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.RefuseFeesInAudit, party, key, prescription_id, body,
                                           acted_by=_acting(party)))


@router.post("/prescriptions/{prescription_id}/clawbacks", status_code=201, response_model=m.CommandResultPublic,
             summary="Claw back fees already paid for a violation")
async def claw_back(prescription_id: RxId, body: m.ClawbackCreate, party: Agency, rt: Rt,
                    key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ClawBackFees, party, key, prescription_id, body, acted_by=_acting(party)))


@router.post("/prescriptions/{prescription_id}/reversals", status_code=201, response_model=m.CommandResultPublic,
             summary="Reverse a prescription's settlement (carried by the next statement)")
async def reverse_prescription(prescription_id: RxId, body: m.ReversalCreate, party: Agency, rt: Rt,
                               key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, c.ReverseSettlement(
              command_id=command_id(party, key), subject_kind=SubjectKind.PRESCRIPTION, subject_id=prescription_id,
              acted_by=_acting(party), **body.model_dump()))


@router.post("/visits/{visit_id}/reversals", status_code=201, response_model=m.CommandResultPublic,
             summary="Reverse a consultation's settlement (carried by the next statement)")
async def reverse_consultation(visit_id: VisitId, body: m.ReversalCreate, party: Agency, rt: Rt,
                               key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, c.ReverseSettlement(
              command_id=command_id(party, key), subject_kind=SubjectKind.CONSULTATION, subject_id=visit_id,
              acted_by=_acting(party), **body.model_dump()))


@router.post("/visits/{visit_id}/audit-refusals", status_code=201, response_model=m.CommandResultPublic,
             summary="Refuse consultation fees in audit")
async def refuse_consultation(visit_id: VisitId, body: m.ConsultationRefusalCreate, party: Agency, rt: Rt,
                              key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, c.RefuseConsultationFees(command_id=command_id(party, key), encounter_id=visit_id,
                                                         acted_by=_acting(party), **body.model_dump()))


@router.post("/visits/{visit_id}/clawbacks", status_code=201, response_model=m.CommandResultPublic,
             summary="Claw back consultation fees already paid for a violation")
async def claw_back_consultation(visit_id: VisitId, body: m.ConsultationClawbackCreate, party: Agency, rt: Rt,
                                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, c.ClawBackConsultationFees(command_id=command_id(party, key), encounter_id=visit_id,
                                                           acted_by=_acting(party), **body.model_dump()))
