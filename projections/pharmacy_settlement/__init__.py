"""Pharmacy settlement projection: monthly statements per designated pharmacy (or delivery enterprise)."""

from __future__ import annotations

from projections.pharmacy_settlement.projection import PharmacySettlement, statements

__all__ = ["PharmacySettlement", "statements"]
