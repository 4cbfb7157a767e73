"""Hospitals: record follow-up visits, issue, cancel and route prescriptions, and read their own."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path

from services.api import models as m
from services.api.deps import After, Hospital, IdempotencyKey, Limit, Rt, RxId, command_id
from services.api.routes.common import ERRORS, prescription_public, run, rx_command, visit_public
from services.application import commands as c

router = APIRouter(prefix="/hospital", tags=["hospital"], responses=ERRORS)


@router.post("/visits", status_code=201, response_model=m.CommandResultPublic,
             summary="Record an online follow-up visit")
async def record_visit(body: m.VisitCreate, party: Hospital, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.RecordFollowUpVisit(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return await run(rt, party, command)


@router.get("/visits", response_model=m.VisitPage, summary="This hospital's visits")
def list_visits(party: Hospital, rt: Rt, after: After = 0, limit: Limit = 50) -> m.VisitPage:
    visits, cursor = rt.reads.hospital_visits(party.id, after, limit)
    return m.VisitPage(items=[visit_public(v) for v in visits], next_cursor=cursor)


@router.get("/visits/{visit_id}", response_model=m.VisitPublic, summary="One of this hospital's visits")
def get_visit(visit_id: UUID, party: Hospital, rt: Rt) -> m.VisitPublic:
    return visit_public(rt.gate.encounter(party, visit_id))


@router.post("/prescriptions", status_code=201, response_model=m.CommandResultPublic,
             summary="Issue a prescription from a recorded visit")
async def issue_prescription(body: m.PrescriptionCreate, party: Hospital, rt: Rt,
                             key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.IssuePrescription(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return await run(rt, party, command)


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
async def cancel(prescription_id: RxId, body: m.CancellationCreate, party: Hospital, rt: Rt,
                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.CancelPrescription, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/routing", response_model=m.CommandResultPublic,
             summary="Route an approved prescription to the pharmacy the patient chose")
async def route(prescription_id: RxId, body: m.RoutingCreate, party: Hospital, rt: Rt,
                key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.RoutePrescription, party, key, prescription_id, body))


# --- dispensing its own prescriptions (routed to itself: pharmacy_id null) -------------------------------


@router.post("/prescriptions/{prescription_id}/validity", response_model=m.CommandResultPublic,
             summary="Extend a prescription's validity (R19: its physician, at most validity_days after issue)")
async def extend_validity(prescription_id: RxId, body: m.ValidityExtensionCreate, party: Hospital, rt: Rt,
                          key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ExtendValidity, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/acceptance", response_model=m.CommandResultPublic,
             summary="Accept a prescription this hospital routed to itself")
async def accept_own(prescription_id: RxId, body: m.AcceptanceCreate, party: Hospital, rt: Rt,
                     key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.AcceptPrescription, party, key, prescription_id, body,
                                           dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/dispenses", status_code=201, response_model=m.CommandResultPublic,
             summary="Dispense its own prescription: one trace code per pack (R8); price at most the registry's "
                     "cap for its physical institution (R7)")
async def dispense_own(prescription_id: RxId, body: m.DispenseCreate, party: Hospital, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.DispensePrescription, party, key, prescription_id, body,
                                           dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/dispenses/{dispense_no}/withdrawal",
             response_model=m.CommandResultPublic, summary="Withdraw one of its own dispenses")
async def withdraw_own(prescription_id: RxId, dispense_no: Annotated[int, Path(ge=1, le=10_000)],
                       body: m.WithdrawalCreate, party: Hospital, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.WithdrawDispense, party, key, prescription_id, body,
                                           dispense_no=dispense_no))


@router.post("/prescriptions/{prescription_id}/pack-returns", response_model=m.CommandResultPublic,
             summary="Packs handed back before collection: their trace codes go back to stock (R8)")
async def return_own_packs(prescription_id: RxId, body: m.PackReturnCreate, party: Hospital, rt: Rt,
                           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ReturnPacks, party, key, prescription_id, body, dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/collection", response_model=m.CommandResultPublic,
             summary="The patient collected its own dispensed prescription in person")
async def collected_own(prescription_id: RxId, body: m.CollectionCreate, party: Hospital, rt: Rt,
                        key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.MarkCollected, party, key, prescription_id, body))
