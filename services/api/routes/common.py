"""What every party's routes share: the documented error answers, the public shapes of aggregates, running a command."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from services.adapters.api_keys import Party
from services.api import models as m
from services.api.deps import Runtime, command_id
from services.application import commands as c
from services.domain.encounter import Encounter
from services.domain.prescription import Prescription

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorPublic, "description": "missing, malformed or revoked API key"},
    403: {"model": m.ErrorPublic, "description": "this key's party kind may not use this operation"},
    404: {"model": m.ErrorPublic, "description": "unknown id, or one this party may not see"},
    409: {"model": m.ErrorPublic, "description": "rule violation (`rule`), illegal transition (`state`), conflict"},
    422: {"model": m.ErrorPublic, "description": "invalid input; `fields` names each invalid field"},
    503: {"model": m.ErrorPublic, "description": "the database is down or restarting: retry after `Retry-After` "
                                                 "seconds (with the same Idempotency-Key, a command applies once)",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
}


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
        business_type=enc.business_type.value, offsite_filing_valid=enc.offsite_filing_valid,
    )


async def run(rt: Runtime, party: Party, command: c.Command) -> m.CommandResultPublic:
    """Send a command as ``party``; the accepted outcome as the response (a refusal raises, see errors.py).

    The command endpoints are ``async def`` and hand only the write (blocking psycopg) to a thread: FastAPI runs a
    plain ``def`` endpoint in a thread and then validates its response in a thread again, two hand-offs where
    one does (building the command from the validated body is CPU only)."""
    return m.CommandResultPublic.of(await run_in_threadpool(rt.execute, party, command))


def rx_command(cls: type[c.PrescriptionCommand], party: Party, key: str | None, prescription_id: UUID,
               body: m.PrescriptionBody, **fields: Any) -> c.Command:
    """The command a prescription body becomes: its fields, the path's id, the scoped idempotency key, and what the
    credential says (``fields``)."""
    return cls(command_id=command_id(party, key), prescription_id=prescription_id, **body.model_dump(), **fields)
