"""Hospital settlement projection: monthly statements per internet hospital, rolled up to its physical institution."""

from __future__ import annotations

from projections.hospital_settlement.projection import (
    DEFAULT_DEPOSIT_RATE,
    HospitalSettlement,
    institution_statements,
    region_institution_statements,
    region_statements,
    settlement_issues,
    statements,
)

__all__ = ["DEFAULT_DEPOSIT_RATE", "HospitalSettlement", "institution_statements", "region_institution_statements",
           "region_statements", "settlement_issues", "statements"]
