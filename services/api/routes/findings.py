"""Regulators: the fraud findings (``projections.fraud``) with filters, and one finding with its evidence."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Path, Query

from projections.fraud import finding as read_finding
from projections.fraud import finding_page
from projections.fraud.projection import PATTERNS, SEVERITIES, Fraud
from services.api import models as m
from services.api.deps import After, Limit, Regulator, Rt
from services.api.routes.common import ERRORS
from services.domain.errors import NotFound

router = APIRouter(prefix="/regulator", tags=["regulator"], responses=ERRORS)

SCHEMA = Fraud.name
_PATTERN = "^(" + "|".join(PATTERNS) + ")$"
_SEVERITY = "^(" + "|".join(SEVERITIES) + ")$"


class FindingNotFound(NotFound):
    kind = "finding"


def _public(row: dict[str, Any]) -> m.FindingPublic:
    return m.FindingPublic(cursor=row["seq"], finding_id=row["finding_id"], pattern=row["pattern"],
                           rule=row["rule_id"], severity=row["severity"], subject=row["subject"],
                           parties=row["parties"], patient_ref=row["patient_ref"],
                           prescription_ids=row["prescription_ids"], explanation=row["explanation"],
                           first_at=row["first_at"], last_at=row["last_at"],
                           evidence=[m.FindingEvidencePublic(**e) for e in row["evidence"]])


@router.get("/findings", response_model=m.FindingPage,
            summary="Fraud findings between trails (repeated trace codes, doctor shopping, suspended actors still "
                    "active, R5/R7 patterns, volume anomalies, many patients to one address), filtered")
def findings(
    party: Regulator, rt: Rt,
    pattern: Annotated[str | None, Query(pattern=_PATTERN)] = None,
    rule: Annotated[str | None, Query(pattern=r"^R\d{1,2}$")] = None,
    severity: Annotated[str | None, Query(pattern=_SEVERITY)] = None,
    concerns: Annotated[str | None, Query(min_length=3, max_length=220, pattern=m.NO_NUL,
                                          description="a party as findings name it: physician:X, pharmacy:Y, "
                                                      "hospital:H, patient:<ref>, address:<ref>")] = None,
    patient_ref: Annotated[str | None, Query(min_length=1, max_length=128, pattern=m.NO_NUL)] = None,
    subject: Annotated[str | None, Query(min_length=1, max_length=200, pattern=m.NO_NUL,
                                         description="a trace code, a physician or dispenser id, …")] = None,
    after: After = 0, limit: Limit = 50,
) -> m.FindingPage:
    try:
        with rt.pool.connection() as conn:
            rows = finding_page(conn, SCHEMA, after=after, limit=limit, pattern=pattern, rule_id=rule,
                                severity=severity, party=concerns, patient_ref=patient_ref, subject=subject)
    except psycopg.errors.UndefinedTable:  # the projection has not created its tables yet
        rows = []
    items = [_public(r) for r in rows]
    return m.FindingPage(items=items, next_cursor=items[-1].cursor if len(items) == limit else None)


@router.get("/findings/{finding_id}", response_model=m.FindingPublic, summary="One finding with its evidence")
def finding(party: Regulator, rt: Rt,
            finding_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^FR-[A-Z0-9-]+-[0-9a-f]{12}$")],
            ) -> m.FindingPublic:
    try:
        with rt.pool.connection() as conn:
            row = read_finding(conn, SCHEMA, finding_id)
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None:
        raise FindingNotFound(finding_id)
    return _public(row)
