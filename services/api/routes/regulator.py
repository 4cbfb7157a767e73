"""Regulators (read-only, every query recorded): search, a prescription's trail and its verification, rule flags,
the dashboard's figures per day and region, and any region's statements."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Query

from services.adapters.api_keys import regulator_queries
from services.api import models as m
from services.api.console.dashboard import CHINA, figures, known_regions
from services.api.deps import After, Limit, Regulator, Rt, RxId
from services.api.routes.common import ERRORS, prescription_public

router = APIRouter(prefix="/regulator", tags=["regulator"], responses=ERRORS)


@router.get("/prescriptions", response_model=m.PrescriptionPage,
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
    found, cursor = rt.reads.search(patient_ref=patient_ref, physician_id=physician_id, pharmacy_id=pharmacy_id,
                                    trace_code=trace_code, hospital_id=hospital_id, after=after, limit=limit)
    return m.PrescriptionPage(items=[prescription_public(rx) for rx in found], next_cursor=cursor)


@router.get("/prescriptions/{prescription_id}/trail", response_model=m.TrailPublic,
            summary="Visit → prescription → dispensing → delivery → settlement, every event, verified")
def trail(prescription_id: RxId, party: Regulator, rt: Rt) -> m.TrailPublic:
    rx = rt.gate.prescription(party, prescription_id)
    return m.TrailPublic(prescription_id=rx.id, status=rx.status.value, events=rt.reads.trail(rx),
                         verification=rt.reads.verification(rx))


@router.get("/prescriptions/{prescription_id}/verification", response_model=m.VerificationPublic,
            summary="Hash-chain verification of the visit's and the prescription's streams")
def verification(prescription_id: RxId, party: Regulator, rt: Rt) -> m.VerificationPublic:
    return rt.reads.verification(rt.gate.prescription(party, prescription_id))


@router.get("/flags", response_model=m.FlagPage, summary="Rule flags (R5, R7, R8...) in recording order")
def flags(party: Regulator, rt: Rt, rule: Annotated[str | None, Query(pattern=r"^R\d{1,2}$")] = None,
          after: After = 0, limit: Limit = 100) -> m.FlagPage:
    items, cursor = rt.reads.flags(rule, after, limit)
    return m.FlagPage(items=items, next_cursor=cursor)


@router.get("/queries", response_model=list[m.RegulatorQueryPublic],
            summary="The record of regulator queries (who, what, when), newest first")
def queries(party: Regulator, rt: Rt, regulator_id: Annotated[str | None, Query(max_length=64, pattern=m.NO_NUL)] = None,
            limit: Limit = 100) -> list[m.RegulatorQueryPublic]:
    with rt.pool.connection() as conn:
        rows = regulator_queries(conn, limit=limit, regulator_id=regulator_id)
    return [m.RegulatorQueryPublic(**r) for r in rows]


@router.get("/dashboard", response_model=m.DashboardPublic,
            summary="Prescriptions issued and settled, fund / personal account / self-pay outflow and flags per day "
                    "and pooling region")
def dashboard(party: Regulator, rt: Rt, days: Annotated[int, Query(ge=1, le=366)] = 30,
              region: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None) -> m.DashboardPublic:
    today = rt.clock().astimezone(ZoneInfo(CHINA)).date()
    since_day = today - timedelta(days=days - 1)
    since = datetime.combine(since_day, time(0), tzinfo=ZoneInfo(CHINA))
    try:
        with rt.pool.connection() as conn:
            rows = figures(conn, rt.reads.traceability, since, region)
    except psycopg.errors.UndefinedTable:  # the projection has not created its tables yet
        rows = []
    return m.DashboardPublic(since=since_day, days=[m.DashboardDayPublic(**r) for r in rows])


@router.get("/statements", response_model=list[m.StatementPage],
            summary="Monthly statements per pooling region (what each region's agency sees); every region when none "
                    "is named")
def statements(party: Regulator, rt: Rt, region: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
               month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None) -> list[m.StatementPage]:
    if region is not None:
        regions = [region]
    else:
        try:
            with rt.pool.connection() as conn:
                regions = known_regions(conn, rt.reads.traceability)
        except psycopg.errors.UndefinedTable:
            regions = []
    return [m.StatementPage(pooling_region=r, items=rt.reads.region_statements(r, month)) for r in regions]


@router.get("/settlement-issues", response_model=m.SettlementIssuePage,
            summary="Settlements that failed (rule id, reason) in one pooling region, or in every region")
def settlement_issues(party: Regulator, rt: Rt, region: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
                      include_resolved: Annotated[bool, Query(description="also the resolved ones")] = False
                      ) -> m.SettlementIssuePage:
    return m.SettlementIssuePage(pooling_region=region or "*",
                                 items=rt.reads.settlement_issues(region, open_only=not include_resolved))
