"""Fraud analytics projection: findings between trails (repeated trace codes, doctor shopping, suspended actors
still active, R5/R7 patterns, volume anomalies, many patients to one address), each linked to its evidence."""

from __future__ import annotations

from projections.fraud.projection import PATTERNS, SEVERITIES, Fraud, Thresholds, finding_id
from projections.fraud.queries import code_events, finding, finding_page, refused_attempts

__all__ = ["PATTERNS", "SEVERITIES", "Fraud", "Thresholds", "code_events", "finding", "finding_id", "finding_page",
           "refused_attempts"]
