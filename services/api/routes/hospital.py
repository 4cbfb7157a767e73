"""Hospitals: record follow-up visits, issue, cancel and route prescriptions, and read their own."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from services.api import models as m
from services.api.deps import After, Hospital, IdempotencyKey, Limit, Rt, RxId, command_id
from services.api.routes.common import ERRORS, prescription_public, run, rx_command, visit_public
from services.application import commands as c

router = APIRouter(prefix="/hospital", tags=["hospital"], responses=ERRORS)


@router.post("/visits", status_code=201, response_model=m.CommandResultPublic,
             summary="Record an online follow-up visit")
def record_visit(body: m.VisitCreate, party: Hospital, rt: Rt, key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.RecordFollowUpVisit(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return run(rt, party, command)


@router.get("/visits", response_model=m.VisitPage, summary="This hospital's visits")
def list_visits(party: Hospital, rt: Rt, after: After = 0, limit: Limit = 50) -> m.VisitPage:
    visits, cursor = rt.reads.hospital_visits(party.id, after, limit)
    return m.VisitPage(items=[visit_public(v) for v in visits], next_cursor=cursor)


@router.get("/visits/{visit_id}", response_model=m.VisitPublic, summary="One of this hospital's visits")
def get_visit(visit_id: UUID, party: Hospital, rt: Rt) -> m.VisitPublic:
    return visit_public(rt.gate.encounter(party, visit_id))


@router.post("/prescriptions", status_code=201, response_model=m.CommandResultPublic,
             summary="Issue a prescription from a recorded visit")
def issue_prescription(body: m.PrescriptionCreate, party: Hospital, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.IssuePrescription(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return run(rt, party, command)


@router.get("/prescriptions", response_model=m.PrescriptionPage, summary="This hospital's prescriptions")
def list_prescriptions(party: Hospital, rt: Rt, after: After = 0, limit: Limit = 50) -> m.PrescriptionPage:
    found, cursor = rt.reads.hospital_prescriptions(party.id, after, limit)
    return m.PrescriptionPage(items=[prescription_public(rx) for rx in found], next_cursor=cursor)


@router.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="One of this hospital's prescriptions")
def get_hospital_prescription(prescription_id: RxId, party: Hospital, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@router.post("/prescriptions/{prescription_id}/cancellation", response_model=m.CommandResultPublic,
             summary="Cancel a prescription")
def cancel(prescription_id: RxId, body: m.CancellationCreate, party: Hospital, rt: Rt,
           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return run(rt, party, rx_command(c.CancelPrescription, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/routing", response_model=m.CommandResultPublic,
             summary="Route an approved prescription to the pharmacy the patient chose")
def route(prescription_id: RxId, body: m.RoutingCreate, party: Hospital, rt: Rt,
          key: IdempotencyKey = None) -> m.CommandResultPublic:
    return run(rt, party, rx_command(c.RoutePrescription, party, key, prescription_id, body))
