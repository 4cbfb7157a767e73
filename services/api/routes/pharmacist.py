"""Pharmacists: the review queue, and approving or rejecting the prescriptions they may review."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import models as m
from services.api.deps import After, IdempotencyKey, Limit, Pharmacist, Rt, RxId
from services.api.routes.common import ERRORS, prescription_public, run, rx_command
from services.application import commands as c

router = APIRouter(prefix="/pharmacist", tags=["pharmacist"], responses=ERRORS)


@router.get("/review-queue", response_model=m.ReviewQueuePublic,
            summary="Prescriptions waiting for this pharmacist's review")
def review_queue(party: Pharmacist, rt: Rt, after: After = 0, limit: Limit = 50) -> m.ReviewQueuePublic:
    items, cursor = rt.reads.review_queue(rt.gate.pharmacist(party), after, limit)
    return m.ReviewQueuePublic(
        items=[m.ReviewItemPublic(prescription_id=rx.id, hospital_id=rx.hospital_id, issued_at=at,
                                  prescription=prescription_public(rx)) for at, rx in items],
        next_cursor=cursor,
    )


@router.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="A prescription this pharmacist may review")
def get_for_review(prescription_id: RxId, party: Pharmacist, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@router.post("/prescriptions/{prescription_id}/approval", response_model=m.CommandResultPublic,
             summary="Approve a prescription")
async def approve(prescription_id: RxId, body: m.ApprovalCreate, party: Pharmacist, rt: Rt,
                  key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ApprovePrescription, party, key, prescription_id, body,
                                           pharmacist_id=party.id))


@router.post("/prescriptions/{prescription_id}/rejection", response_model=m.CommandResultPublic,
             summary="Reject a prescription, with reasons")
async def reject(prescription_id: RxId, body: m.RejectionCreate, party: Pharmacist, rt: Rt,
                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.RejectPrescription, party, key, prescription_id, body,
                                           pharmacist_id=party.id))
