"""The fraud projection's rule ids are the catalogue's, and every pattern is described."""

from __future__ import annotations

from projections.fraud import projection as fraud
from services.domain import rules


def test_the_rule_ids_fraud_findings_name_are_catalogue_rules() -> None:
    assert (fraud.R5, fraud.R7, fraud.R8) == (rules.R5, rules.R7, rules.R8)
    catalogued = {r.id for r in rules.catalogue()}
    assert set(fraud.RULE_OF.values()) <= catalogued


def test_every_pattern_is_described_and_ids_are_stable() -> None:
    assert set(fraud.RULE_OF) <= set(fraud.PATTERNS)
    assert fraud.finding_id(fraud.DOCTOR_SHOP, "p|g") == fraud.finding_id(fraud.DOCTOR_SHOP, "p|g")
    assert fraud.finding_id(fraud.DOCTOR_SHOP, "p|g").startswith("FR-DOCTOR-SHOP-")
