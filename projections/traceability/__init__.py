"""Traceability projection: the full trail per prescription and indexes by patient, physician, pharmacy, code."""

from __future__ import annotations

from projections.traceability.projection import Traceability
from projections.traceability.queries import (
    Step,
    by_patient,
    by_pharmacy,
    by_physician,
    by_trace_code,
    prescription,
    trail,
    visits_by_patient,
)

__all__ = ["Step", "Traceability", "by_patient", "by_pharmacy", "by_physician", "by_trace_code", "prescription",
           "trail", "visits_by_patient"]
