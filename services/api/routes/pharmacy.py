"""Pharmacies: the feed of prescriptions routed to them, and accepting, returning, dispensing and handing over."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from services.api import models as m
from services.api.deps import After, IdempotencyKey, Limit, Pharmacy, Rt, RxId
from services.api.routes.common import ERRORS, prescription_public, run, rx_command
from services.application import commands as c

router = APIRouter(prefix="/pharmacy", tags=["pharmacy"], responses=ERRORS)


@router.get("/feed", response_model=m.FeedPagePublic,
            summary="Events of prescriptions routed to this pharmacy, from a cursor (long-poll with `wait`)")
async def feed(party: Pharmacy, rt: Rt, after: After = 0, limit: Limit = 100,
               wait: Annotated[float, Query(ge=0, le=30, description="seconds to wait for news")] = 0
               ) -> m.FeedPagePublic:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        items, cursor = await run_in_threadpool(rt.reads.pharmacy_feed, party.id, after, limit)
        if items or loop.time() >= deadline:
            return m.FeedPagePublic(items=items, cursor=cursor)
        after = cursor
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))


@router.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="A prescription routed to this pharmacy")
def get_routed(prescription_id: RxId, party: Pharmacy, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@router.post("/prescriptions/{prescription_id}/acceptance", response_model=m.CommandResultPublic,
             summary="Accept a routed prescription")
async def accept(prescription_id: RxId, body: m.AcceptanceCreate, party: Pharmacy, rt: Rt,
                 key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.AcceptPrescription, party, key, prescription_id, body,
                                           dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/return", response_model=m.CommandResultPublic,
             summary="Return (decline) a routed prescription")
async def give_back(prescription_id: RxId, body: m.ReturnCreate, party: Pharmacy, rt: Rt,
                    key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ReturnPrescription, party, key, prescription_id, body,
                                           dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/dispenses", status_code=201, response_model=m.CommandResultPublic,
             summary="Dispense: one 20-digit trace code per pack (R8; split pack: the opened pack's code and the units); "
                     "caps and payment standards are the registry's (R7)")
async def dispense(prescription_id: RxId, body: m.DispenseCreate, party: Pharmacy, rt: Rt,
                   key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.DispensePrescription, party, key, prescription_id, body,
                                           dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/dispenses/{dispense_no}/withdrawal",
             response_model=m.CommandResultPublic, summary="Withdraw one dispense")
async def withdraw(prescription_id: RxId, dispense_no: Annotated[int, Path(ge=1, le=10_000)], body: m.WithdrawalCreate,
                   party: Pharmacy, rt: Rt, key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.WithdrawDispense, party, key, prescription_id, body,
                                           dispense_no=dispense_no))


@router.post("/prescriptions/{prescription_id}/pack-returns", response_model=m.CommandResultPublic,
             summary="Packs handed back before hand-over: their trace codes go back to stock (R8)")
async def return_packs(prescription_id: RxId, body: m.PackReturnCreate, party: Pharmacy, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ReturnPacks, party, key, prescription_id, body, dispenser_id=party.id))


@router.post("/prescriptions/{prescription_id}/delivery", response_model=m.CommandResultPublic,
             summary="Arrange delivery (fee stated to the patient in advance)")
async def arrange_delivery(prescription_id: RxId, body: m.DeliveryCreate, party: Pharmacy, rt: Rt,
                           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.ArrangeDelivery, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/delivered", response_model=m.CommandResultPublic,
             summary="Mark delivered")
async def mark_delivered(prescription_id: RxId, body: m.DeliveredCreate, party: Pharmacy, rt: Rt,
                         key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.MarkDelivered, party, key, prescription_id, body))


@router.post("/prescriptions/{prescription_id}/collection", response_model=m.CommandResultPublic,
             summary="Mark collected in person")
async def mark_collected(prescription_id: RxId, body: m.CollectionCreate, party: Pharmacy, rt: Rt,
                         key: IdempotencyKey = None) -> m.CommandResultPublic:
    return await run(rt, party, rx_command(c.MarkCollected, party, key, prescription_id, body))
