"""The routing choice (trail step 4, 处方流转; 002 §三(六), 000 §五(三)3, 001 art. 25): which designated retail
pharmacy an approved prescription goes to. Pure: no SQL, no Kafka; the router worker
(``services.workers.router``) feeds it what it knows and sends the command.

Where it routes, in this order:

1. The patient's choice (``PrescriptionIssued.preferred_pharmacy_id``), unless that pharmacy is known to be
   unable to take it: agreement suspended, another pooling region, or it already returned this prescription.
   Its declared drug list is not checked: the patient chose it (if it lacks a drug it returns the
   prescription, and the rule below picks another). A chosen pharmacy not known yet is tried all the same;
   the write side holds the pharmacy's record and refuses it if it is not eligible.
2. The routing rule. Eligible: designated in the prescription's pooling region, agreement active, has not
   returned this prescription, and has declared a drug list (``PharmacyDesignated.drug_codes``) holding
   every drug of the prescription. A pharmacy that declared no list is never picked by the rule (we do not
   know what it carries), only by the patient's choice. Among the eligible, the pharmacy with the lowest
   ``sha256("<prescription id>|<pharmacy id>")`` (hex) wins: the same prescription and pharmacies always give
   the same pharmacy, prescriptions spread evenly over a region's pharmacies, and designating or suspending
   one pharmacy moves only the prescriptions that pharmacy wins or held (rendezvous hashing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from events.prescription import RoutingBasis


@dataclass(frozen=True)
class PharmacyInfo:
    """A designated pharmacy as the router knows it; ``drug_codes`` None = no list declared."""

    pharmacy_id: str
    pooling_region: str
    agreement_active: bool = True
    drug_codes: frozenset[str] | None = None


@dataclass(frozen=True)
class RoutingRequest:
    """What the choice depends on: the prescription's region and drugs, the patient's choice, past returns."""

    prescription_id: UUID
    pooling_region: str
    drug_codes: frozenset[str]
    preferred_pharmacy_id: str | None = None
    returned_by: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    pharmacy_id: str
    basis: RoutingBasis


def rule_rank(prescription_id: UUID, pharmacy_id: str) -> str:
    """The rule's order: lower wins (hex digest, so plain string order)."""
    return hashlib.sha256(f"{prescription_id}|{pharmacy_id}".encode()).hexdigest()


def may_take(request: RoutingRequest, pharmacy: PharmacyInfo) -> bool:
    """May this pharmacy receive the prescription at all: same pooling region, agreement active, not returned."""
    return (
        pharmacy.pooling_region == request.pooling_region
        and pharmacy.agreement_active
        and pharmacy.pharmacy_id not in request.returned_by
    )


def eligible_by_rule(request: RoutingRequest, pharmacy: PharmacyInfo) -> bool:
    """``may_take`` and it declared a drug list that holds every drug of the prescription."""
    return (
        may_take(request, pharmacy)
        and pharmacy.drug_codes is not None
        and request.drug_codes <= pharmacy.drug_codes
    )


def candidates(request: RoutingRequest, pharmacies: Iterable[PharmacyInfo]) -> list[Candidate]:
    """Pharmacies to try, best first: the patient's choice (unless known ineligible), then the rule's order."""
    known = {p.pharmacy_id: p for p in pharmacies}
    out: list[Candidate] = []
    chosen = request.preferred_pharmacy_id
    if chosen is not None and chosen not in request.returned_by:
        info = known.get(chosen)
        if info is None or may_take(request, info):
            out.append(Candidate(chosen, RoutingBasis.PATIENT_CHOICE))
    ranked = sorted(
        (p.pharmacy_id for p in known.values() if p.pharmacy_id != chosen and eligible_by_rule(request, p)),
        key=lambda pharmacy_id: rule_rank(request.prescription_id, pharmacy_id),
    )
    out.extend(Candidate(pharmacy_id, RoutingBasis.ROUTING_RULE) for pharmacy_id in ranked)
    return out


def choose(request: RoutingRequest, pharmacies: Iterable[PharmacyInfo]) -> Candidate | None:
    """The first candidate, or None when no pharmacy is eligible."""
    found = candidates(request, pharmacies)
    return found[0] if found else None
