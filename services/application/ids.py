"""Deterministic aggregate ids from business keys, so the event store's (originator_id, originator_version)
primary key enforces uniqueness: a second registration, visit or prescription with the same key collides."""

from __future__ import annotations

from uuid import UUID

from services.domain.aggregate import natural_id
from services.domain.registries import PatientStatus, Pharmacist, Pharmacy, Physician
from services.domain.trace_code import TraceCode


def encounter_id_for(hospital_id: str, visit_ref: str) -> UUID:
    return natural_id("encounter", f"{hospital_id}/{visit_ref}")


def prescription_id_for(hospital_id: str, prescription_ref: str) -> UUID:
    return natural_id("prescription", f"{hospital_id}/{prescription_ref}")


physician_id_for = Physician.id_for
pharmacist_id_for = Pharmacist.id_for
pharmacy_id_for = Pharmacy.id_for
patient_status_id_for = PatientStatus.id_for
trace_code_id_for = TraceCode.id_for
