"""Pharmacy settlement projection: monthly statements per designated pharmacy (or delivery enterprise)."""

from __future__ import annotations

from projections.pharmacy_settlement.projection import PharmacySettlement, region_statements, statements

__all__ = ["PharmacySettlement", "region_statements", "statements"]
