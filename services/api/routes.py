"""The parties' resources, in the domain's words: visits, prescriptions, review, feed, dispenses, statements, trails.

Each router is scoped to one party kind (its key's kind, else 403). Commands take the acting party's id from
the key, never from the body, and an optional ``Idempotency-Key`` header.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool

from services.adapters.api_keys import Party, PartyKind, regulator_queries
from services.api import models as m
from services.api.http import (
    IdempotencyKey,
    Runtime,
    command_id,
    party_of,
    record_regulator_request,
    runtime,
)
from services.application import commands as c
from services.domain.encounter import Encounter
from services.domain.prescription import Prescription

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorPublic, "description": "missing, malformed or revoked API key"},
    403: {"model": m.ErrorPublic, "description": "this key's party kind may not use this operation"},
    404: {"model": m.ErrorPublic, "description": "unknown id, or one this party may not see"},
    409: {"model": m.ErrorPublic, "description": "rule violation (`rule`), illegal transition (`state`), conflict"},
    422: {"model": m.ErrorPublic, "description": "invalid input; `fields` names each invalid field"},
}

Rt = Annotated[Runtime, Depends(runtime)]
Hospital = Annotated[Party, Depends(party_of(PartyKind.HOSPITAL))]
Pharmacist = Annotated[Party, Depends(party_of(PartyKind.PHARMACIST))]
Pharmacy = Annotated[Party, Depends(party_of(PartyKind.PHARMACY))]
Agency = Annotated[Party, Depends(party_of(PartyKind.AGENCY))]
Regulator = Annotated[Party, Depends(record_regulator_request)]
RxId = Annotated[UUID, Path(description="prescription id")]
After = Annotated[int, Query(ge=0, le=2**62, description="cursor: return what comes after this position")]
Limit = Annotated[int, Query(ge=1, le=500)]


def prescription_public(rx: Prescription) -> m.PrescriptionPublic:
    return m.PrescriptionPublic(
        prescription_id=rx.id, version=rx.version, status=rx.status.value, business_type=rx.business_type.value,
        hospital_id=rx.hospital_id, encounter_id=rx.encounter_id, pooling_region=rx.pooling_region,
        insured_region=rx.insured_region, insurance_type=rx.insurance_type, patient_ref=rx.patient_ref,
        physician_id=rx.physician_id, items=list(rx.items), valid_until=rx.valid_until,
        pharmacist_id=rx.pharmacist_id, dispenser_kind=rx.dispenser_kind.value if rx.dispenser_kind else None,
        dispenser_id=rx.dispenser_id,
        dispenses=[m.DispensePublic(dispense_no=n, lines=list(ls)) for n, ls in sorted(rx.dispenses.items())],
        delivery_enterprise_id=rx.delivery_enterprise_id, delivery_fee=rx.delivery_fee, total=rx.total,
        fund=rx.fund, personal_account=rx.personal_account, self_pay=rx.self_pay, refused=rx.refused,
        clawed_back=rx.clawed_back, flags=list(rx.flags),
    )


def visit_public(enc: Encounter) -> m.VisitPublic:
    return m.VisitPublic(
        visit_id=enc.id, hospital_id=enc.hospital_id, physical_institution_id=enc.physical_institution_id,
        pooling_region=enc.pooling_region, insured_region=enc.insured_region, insurance_type=enc.insurance_type,
        patient_ref=enc.patient_ref, physician_id=enc.physician_id, diagnosis_code=enc.diagnosis_code,
        diagnosis_name=enc.diagnosis_name, consultation_fee=enc.consultation_fee, settled=enc.settled,
        business_type=enc.business_type.value,
    )


def _run(rt: Runtime, party: Party, command: c.Command) -> m.CommandResultPublic:
    return m.CommandResultPublic.of(rt.execute(party, command))


def _rx_command(cls: type[c.Command], party: Party, key: str | None, prescription_id: UUID, body: Any,
                **fields: Any) -> c.Command:
    return cls(command_id=command_id(party, key), prescription_id=prescription_id, **body.model_dump(), **fields)


# --- hospital -----------------------------------------------------------------------------------------

hospital = APIRouter(prefix="/hospital", tags=["hospital"], responses=_ERRORS)


@hospital.post("/visits", status_code=201, response_model=m.CommandResultPublic,
               summary="Record an online follow-up visit")
def record_visit(body: m.VisitCreate, party: Hospital, rt: Rt, key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.RecordFollowUpVisit(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return _run(rt, party, command)


@hospital.get("/visits", response_model=m.VisitPage, summary="This hospital's visits")
def list_visits(party: Hospital, rt: Rt, after: After = 0, limit: Limit = 50) -> m.VisitPage:
    visits, cursor = rt.views.hospital_visits(party.id, after, limit)
    return m.VisitPage(items=[visit_public(v) for v in visits], next_cursor=cursor)


@hospital.get("/visits/{visit_id}", response_model=m.VisitPublic, summary="One of this hospital's visits")
def get_visit(visit_id: UUID, party: Hospital, rt: Rt) -> m.VisitPublic:
    return visit_public(rt.gate.encounter(party, visit_id))


@hospital.post("/prescriptions", status_code=201, response_model=m.CommandResultPublic,
               summary="Issue a prescription from a recorded visit")
def issue_prescription(body: m.PrescriptionCreate, party: Hospital, rt: Rt,
                       key: IdempotencyKey = None) -> m.CommandResultPublic:
    command = c.IssuePrescription(command_id=command_id(party, key), hospital_id=party.id, **body.model_dump())
    return _run(rt, party, command)


@hospital.get("/prescriptions", response_model=m.PrescriptionPage, summary="This hospital's prescriptions")
def list_prescriptions(party: Hospital, rt: Rt, after: After = 0, limit: Limit = 50) -> m.PrescriptionPage:
    found, cursor = rt.views.hospital_prescriptions(party.id, after, limit)
    return m.PrescriptionPage(items=[prescription_public(rx) for rx in found], next_cursor=cursor)


@hospital.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
              summary="One of this hospital's prescriptions")
def get_hospital_prescription(prescription_id: RxId, party: Hospital, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@hospital.post("/prescriptions/{prescription_id}/cancellation", response_model=m.CommandResultPublic,
               summary="Cancel a prescription")
def cancel(prescription_id: RxId, body: m.CancellationCreate, party: Hospital, rt: Rt,
           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.CancelPrescription, party, key, prescription_id, body))


@hospital.post("/prescriptions/{prescription_id}/routing", response_model=m.CommandResultPublic,
               summary="Route an approved prescription to the pharmacy the patient chose")
def route(prescription_id: RxId, body: m.RoutingCreate, party: Hospital, rt: Rt,
          key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.RoutePrescription, party, key, prescription_id, body))


# --- pharmacist ---------------------------------------------------------------------------------------

pharmacist = APIRouter(prefix="/pharmacist", tags=["pharmacist"], responses=_ERRORS)


@pharmacist.get("/review-queue", response_model=m.ReviewQueuePublic,
                summary="Prescriptions waiting for this pharmacist's review")
def review_queue(party: Pharmacist, rt: Rt, after: After = 0, limit: Limit = 50) -> m.ReviewQueuePublic:
    items, cursor = rt.views.review_queue(rt.gate.pharmacist(party), after, limit)
    return m.ReviewQueuePublic(
        items=[m.ReviewItemPublic(prescription_id=rx.id, hospital_id=rx.hospital_id, issued_at=at,
                                  prescription=prescription_public(rx)) for at, rx in items],
        next_cursor=cursor,
    )


@pharmacist.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
                summary="A prescription this pharmacist may review")
def get_for_review(prescription_id: RxId, party: Pharmacist, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@pharmacist.post("/prescriptions/{prescription_id}/approval", response_model=m.CommandResultPublic,
                 summary="Approve a prescription")
def approve(prescription_id: RxId, body: m.ApprovalCreate, party: Pharmacist, rt: Rt,
            key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.ApprovePrescription, party, key, prescription_id, body,
                                       pharmacist_id=party.id))


@pharmacist.post("/prescriptions/{prescription_id}/rejection", response_model=m.CommandResultPublic,
                 summary="Reject a prescription, with reasons")
def reject(prescription_id: RxId, body: m.RejectionCreate, party: Pharmacist, rt: Rt,
           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.RejectPrescription, party, key, prescription_id, body,
                                       pharmacist_id=party.id))


# --- pharmacy -----------------------------------------------------------------------------------------

pharmacy = APIRouter(prefix="/pharmacy", tags=["pharmacy"], responses=_ERRORS)


@pharmacy.get("/feed", response_model=m.FeedPagePublic,
              summary="Events of prescriptions routed to this pharmacy, from a cursor (long-poll with `wait`)")
async def feed(party: Pharmacy, rt: Rt, after: After = 0, limit: Limit = 100,
               wait: Annotated[float, Query(ge=0, le=30, description="seconds to wait for news")] = 0
               ) -> m.FeedPagePublic:
    deadline = asyncio.get_running_loop().time() + wait
    cursor = after
    while True:
        items, cursor = await run_in_threadpool(rt.views.pharmacy_feed, party.id, cursor, limit)
        if items or asyncio.get_running_loop().time() >= deadline:
            return m.FeedPagePublic(items=[m.FeedItemPublic(**i) for i in items], cursor=cursor)
        await asyncio.sleep(min(0.2, max(0.0, deadline - asyncio.get_running_loop().time())))


@pharmacy.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
              summary="A prescription routed to this pharmacy")
def get_routed(prescription_id: RxId, party: Pharmacy, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@pharmacy.post("/prescriptions/{prescription_id}/acceptance", response_model=m.CommandResultPublic,
               summary="Accept a routed prescription")
def accept(prescription_id: RxId, body: m.AcceptanceCreate, party: Pharmacy, rt: Rt,
           key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.AcceptPrescription, party, key, prescription_id, body,
                                       dispenser_id=party.id))


@pharmacy.post("/prescriptions/{prescription_id}/return", response_model=m.CommandResultPublic,
               summary="Return (decline) a routed prescription")
def give_back(prescription_id: RxId, body: m.ReturnCreate, party: Pharmacy, rt: Rt,
              key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.ReturnPrescription, party, key, prescription_id, body,
                                       dispenser_id=party.id))


@pharmacy.post("/prescriptions/{prescription_id}/dispenses", status_code=201, response_model=m.CommandResultPublic,
               summary="Dispense, with each pack's trace code (partial allowed)")
def dispense(prescription_id: RxId, body: m.DispenseCreate, party: Pharmacy, rt: Rt,
             key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.DispensePrescription, party, key, prescription_id, body,
                                       dispenser_id=party.id))


@pharmacy.post("/prescriptions/{prescription_id}/dispenses/{dispense_no}/withdrawal",
               response_model=m.CommandResultPublic, summary="Withdraw one dispense")
def withdraw(prescription_id: RxId, dispense_no: Annotated[int, Path(ge=1, le=10_000)], body: m.WithdrawalCreate,
             party: Pharmacy, rt: Rt, key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.WithdrawDispense, party, key, prescription_id, body,
                                       dispense_no=dispense_no))


@pharmacy.post("/prescriptions/{prescription_id}/delivery", response_model=m.CommandResultPublic,
               summary="Arrange delivery (fee stated to the patient in advance)")
def arrange_delivery(prescription_id: RxId, body: m.DeliveryCreate, party: Pharmacy, rt: Rt,
                     key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.ArrangeDelivery, party, key, prescription_id, body))


@pharmacy.post("/prescriptions/{prescription_id}/delivered", response_model=m.CommandResultPublic,
               summary="Mark delivered")
def mark_delivered(prescription_id: RxId, body: m.DeliveredCreate, party: Pharmacy, rt: Rt,
                   key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.MarkDelivered, party, key, prescription_id, body))


@pharmacy.post("/prescriptions/{prescription_id}/collection", response_model=m.CommandResultPublic,
               summary="Mark collected in person")
def mark_collected(prescription_id: RxId, body: m.CollectionCreate, party: Pharmacy, rt: Rt,
                   key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.MarkCollected, party, key, prescription_id, body))


# --- agency -------------------------------------------------------------------------------------------

agency = APIRouter(prefix="/agency", tags=["agency"], responses=_ERRORS)


def _statement_rows(rt: Runtime, region: str, month: str | None) -> list[m.StatementPublic]:
    from projections.hospital_settlement.projection import HospitalSettlement
    from projections.hospital_settlement.projection import statements as hospital_statements
    from projections.pharmacy_settlement.projection import PharmacySettlement
    from projections.pharmacy_settlement.projection import statements as pharmacy_statements

    hospitals, pharmacies = rt.views.region_parties(region)
    out: list[m.StatementPublic] = []
    for fetch, schema, key, kind_key, wanted in (
        (hospital_statements, HospitalSettlement.name, "hospital_id", None, hospitals),
        (pharmacy_statements, PharmacySettlement.name, "party_id", "party_kind", pharmacies),
    ):
        if not wanted:
            continue
        try:
            with rt.pool.connection() as conn:
                rows = fetch(conn, schema, month=month)
        except psycopg.errors.UndefinedTable:  # that projection has not been created yet: nothing settled
            continue
        for row in rows:
            if row[key] not in wanted or (kind_key and row[kind_key] != "pharmacy"):
                continue
            figures = {k: v for k, v in row.items() if k not in {key, kind_key, "month"}}
            out.append(m.StatementPublic(party_kind="hospital" if kind_key is None else "pharmacy",
                                         party_id=row[key], month=row["month"], figures=figures))
    return out


@agency.get("/statements", response_model=m.StatementPage,
            summary="Monthly statements of the hospitals and pharmacies of this pooling region")
def statements(party: Agency, rt: Rt,
               month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None) -> m.StatementPage:
    return m.StatementPage(pooling_region=party.id, items=_statement_rows(rt, party.id, month))


@agency.get("/prescriptions/{prescription_id}", response_model=m.PrescriptionPublic,
            summary="A prescription of this pooling region")
def get_region_prescription(prescription_id: RxId, party: Agency, rt: Rt) -> m.PrescriptionPublic:
    return prescription_public(rt.gate.prescription(party, prescription_id))


@agency.post("/prescriptions/{prescription_id}/audit-refusals", status_code=201,
             response_model=m.CommandResultPublic, summary="Refuse fees in audit")
def refuse_fees(prescription_id: RxId, body: m.AuditRefusalCreate, party: Agency, rt: Rt,
                key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.RefuseFeesInAudit, party, key, prescription_id, body))


@agency.post("/prescriptions/{prescription_id}/clawbacks", status_code=201, response_model=m.CommandResultPublic,
             summary="Claw back fees already paid for a violation")
def claw_back(prescription_id: RxId, body: m.ClawbackCreate, party: Agency, rt: Rt,
              key: IdempotencyKey = None) -> m.CommandResultPublic:
    return _run(rt, party, _rx_command(c.ClawBackFees, party, key, prescription_id, body))


# --- regulator ----------------------------------------------------------------------------------------

regulator = APIRouter(prefix="/regulator", tags=["regulator"], responses=_ERRORS)


@regulator.get("/prescriptions", response_model=m.PrescriptionPage,
               summary="Search prescriptions by patient pseudonym, physician, pharmacy, hospital or trace code")
def search(
    party: Regulator, rt: Rt,
    patient_ref: Annotated[str | None, Query(min_length=1, max_length=128, pattern=m.NO_NUL)] = None,
    physician_id: Annotated[str | None, Query(min_length=1, max_length=200, pattern=m.NO_NUL)] = None,
    pharmacy_id: Annotated[str | None, Query(min_length=1, max_length=200, pattern=m.NO_NUL)] = None,
    hospital_id: Annotated[str | None, Query(min_length=1, max_length=200, pattern=m.NO_NUL)] = None,
    trace_code: Annotated[str | None, Query(pattern=r"^\d{20}$")] = None,
    after: After = 0, limit: Limit = 50,
) -> m.PrescriptionPage:
    found, cursor = rt.views.search(patient_ref=patient_ref, physician_id=physician_id, pharmacy_id=pharmacy_id,
                                    trace_code=trace_code, hospital_id=hospital_id, after=after, limit=limit)
    return m.PrescriptionPage(items=[prescription_public(rx) for rx in found], next_cursor=cursor)


@regulator.get("/prescriptions/{prescription_id}/trail", response_model=m.TrailPublic,
               summary="Visit → prescription → dispensing → delivery → settlement, every event, verified")
def trail(prescription_id: RxId, party: Regulator, rt: Rt) -> m.TrailPublic:
    rx = rt.gate.prescription(party, prescription_id)
    return m.TrailPublic(prescription_id=rx.id, status=rx.status.value,
                         events=[m.TrailEventPublic(**e) for e in rt.views.trail(rx)],
                         verification=m.VerificationPublic(**rt.views.verification(rx)))


@regulator.get("/prescriptions/{prescription_id}/verification", response_model=m.VerificationPublic,
               summary="Hash-chain verification of the visit's and the prescription's streams")
def verification(prescription_id: RxId, party: Regulator, rt: Rt) -> m.VerificationPublic:
    return m.VerificationPublic(**rt.views.verification(rt.gate.prescription(party, prescription_id)))


@regulator.get("/flags", response_model=m.FlagPage, summary="Rule flags (R5, R7, R8...) in recording order")
def flags(party: Regulator, rt: Rt, rule: Annotated[str | None, Query(pattern=r"^R\d{1,2}$")] = None,
          after: After = 0, limit: Limit = 100) -> m.FlagPage:
    items, cursor = rt.views.flags(rule, after, limit)
    return m.FlagPage(items=[m.FlagPublic(**i) for i in items], next_cursor=cursor)


@regulator.get("/queries", response_model=list[m.RegulatorQueryPublic],
               summary="The record of regulator queries (who, what, when), newest first")
def queries(party: Regulator, rt: Rt, regulator_id: Annotated[str | None, Query(max_length=64, pattern=m.NO_NUL)] = None,
            limit: Limit = 100) -> list[m.RegulatorQueryPublic]:
    with rt.pool.connection() as conn:
        rows = regulator_queries(conn, limit=limit, regulator_id=regulator_id)
    return [m.RegulatorQueryPublic(**r) for r in rows]


ROUTERS = (hospital, pharmacist, pharmacy, agency, regulator)
