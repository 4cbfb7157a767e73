"""The router's choice (pure), its command keys, and the event fields it reads (schema v2 with upcasters)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from uuid import UUID, uuid4

import pytest

from events import event_hash, from_json, to_json
from events.base import GENESIS_HASH
from events.prescription import PrescriptionIssued, RoutingBasis
from events.registries import PharmacyDesignated
from services.application.commands import Command, RoutePrescription
from services.application.outcomes import Outcome
from services.domain import Pharmacy, verify_stream
from services.domain.routing import (
    Candidate,
    PharmacyInfo,
    RoutingRequest,
    candidates,
    choose,
    eligible_by_rule,
    rule_rank,
)
from services.workers.base import command_key
from services.workers.router import Router
from tests.support.domain import World, item

REGION = "370100"
OTHER = "220100"
A, B = "XA10BAA001A001010101", "XC08CAA001A001010101"
DRUGS = frozenset({A, B})


def rx(**kw: object) -> RoutingRequest:
    fields: dict[str, object] = {"prescription_id": uuid4(), "pooling_region": REGION, "drug_codes": DRUGS}
    fields.update(kw)
    return RoutingRequest(**fields)  # type: ignore[arg-type]


def pharmacy(pharmacy_id: str, *, region: str = REGION, active: bool = True,
             drugs: frozenset[str] | None = DRUGS) -> PharmacyInfo:
    return PharmacyInfo(pharmacy_id, region, active, drugs)


ELIGIBLE = [pharmacy("E1"), pharmacy("E2"), pharmacy("E3", drugs=DRUGS | {"XZZZZZZZZZZZZZZZZZZZ"})]
INELIGIBLE = [
    pharmacy("SUSPENDED", active=False),
    pharmacy("ELSEWHERE", region=OTHER),
    pharmacy("LACKS-B", drugs=frozenset({A})),
    pharmacy("NO-LIST", drugs=None),
]


# --- the rule ---------------------------------------------------------------------------------------------


def test_rule_picks_the_lowest_hash_among_eligible_pharmacies() -> None:
    for _ in range(50):
        request = rx()
        picked = choose(request, [*ELIGIBLE, *INELIGIBLE])
        want = min((p.pharmacy_id for p in ELIGIBLE), key=lambda p: rule_rank(request.prescription_id, p))
        assert picked == Candidate(want, RoutingBasis.ROUTING_RULE)


def test_rank_is_sha256_of_prescription_and_pharmacy() -> None:
    rx_id = UUID("00000000-0000-4000-8000-000000000001")
    assert rule_rank(rx_id, "PH-1") == hashlib.sha256(f"{rx_id}|PH-1".encode()).hexdigest()


def test_rule_never_picks_suspended_other_region_lacking_or_undeclared() -> None:
    request = rx()
    for p in INELIGIBLE:
        assert not eligible_by_rule(request, p), p
    for _ in range(200):
        assert choose(rx(), INELIGIBLE) is None
    tried = {c.pharmacy_id for _ in range(200) for c in candidates(rx(), [*ELIGIBLE, *INELIGIBLE])}
    assert tried == {"E1", "E2", "E3"}


def test_same_input_same_pharmacy_whatever_the_order() -> None:
    pool = [*ELIGIBLE, *INELIGIBLE]
    for _ in range(50):
        request = rx()
        first = candidates(request, pool)
        shuffled = pool[:]
        random.shuffle(shuffled)
        assert candidates(request, shuffled) == first
        assert candidates(RoutingRequest(request.prescription_id, REGION, DRUGS), pool) == first


def test_prescriptions_spread_over_the_region_pharmacies() -> None:
    counts = Counter(choose(rx(), ELIGIBLE).pharmacy_id for _ in range(600))  # type: ignore[union-attr]
    assert set(counts) == {"E1", "E2", "E3"} and min(counts.values()) > 120


def test_a_new_pharmacy_moves_only_what_it_wins() -> None:
    requests = [rx() for _ in range(300)]
    before = {r.prescription_id: choose(r, ELIGIBLE) for r in requests}
    after = {r.prescription_id: choose(r, [*ELIGIBLE, pharmacy("E4")]) for r in requests}
    moved = {k for k in before if before[k] != after[k]}
    assert moved and all(after[k].pharmacy_id == "E4" for k in moved)  # type: ignore[union-attr]


def test_a_pharmacy_that_returned_the_prescription_is_not_chosen_again() -> None:
    request = rx()
    first = choose(request, ELIGIBLE)
    assert first is not None
    again = candidates(rx(prescription_id=request.prescription_id, returned_by=frozenset({first.pharmacy_id})),
                       ELIGIBLE)
    assert first.pharmacy_id not in {c.pharmacy_id for c in again} and len(again) == 2


# --- the patient's choice ------------------------------------------------------------------------------------


def test_patient_choice_comes_first_then_the_rule_as_fallback() -> None:
    request = rx(preferred_pharmacy_id="E2")
    found = candidates(request, ELIGIBLE)
    assert found[0] == Candidate("E2", RoutingBasis.PATIENT_CHOICE)
    assert [c.basis for c in found[1:]] == [RoutingBasis.ROUTING_RULE] * 2
    assert "E2" not in {c.pharmacy_id for c in found[1:]}


def test_patient_choice_need_not_declare_the_drugs() -> None:
    assert choose(rx(preferred_pharmacy_id="NO-LIST"), INELIGIBLE) == Candidate("NO-LIST", RoutingBasis.PATIENT_CHOICE)
    assert choose(rx(preferred_pharmacy_id="LACKS-B"), INELIGIBLE) == Candidate("LACKS-B",
                                                                               RoutingBasis.PATIENT_CHOICE)


@pytest.mark.parametrize("chosen", ["SUSPENDED", "ELSEWHERE"])
def test_a_chosen_pharmacy_known_to_be_ineligible_is_skipped(chosen: str) -> None:
    found = candidates(rx(preferred_pharmacy_id=chosen), [*ELIGIBLE, *INELIGIBLE])
    assert found and all(c.basis is RoutingBasis.ROUTING_RULE for c in found)


def test_a_chosen_pharmacy_that_returned_it_is_skipped() -> None:
    found = candidates(rx(preferred_pharmacy_id="E1", returned_by=frozenset({"E1"})), ELIGIBLE)
    assert {c.pharmacy_id for c in found} == {"E2", "E3"}


def test_a_chosen_pharmacy_not_seen_yet_is_tried_first() -> None:
    assert choose(rx(preferred_pharmacy_id="NEW-ONE"), ELIGIBLE) == Candidate("NEW-ONE", RoutingBasis.PATIENT_CHOICE)


# --- keys ------------------------------------------------------------------------------------------------------


class _Recorder:
    """The write side's ``handle`` as far as keys go: a repeated key gets the first outcome back."""

    def __init__(self) -> None:
        self.seen: dict[str, Outcome] = {}

    def handle(self, command: Command) -> Outcome:
        key = command.command_id or ""
        if key in self.seen:
            return self.seen[key].model_copy(update={"replayed": True})
        self.seen[key] = Outcome(command_type=type(command).__name__, command_id=key, status="ok")
        return self.seen[key]


def test_command_keys_name_the_worker_and_the_triggering_event() -> None:
    assert command_key("router", "e-1") == "router:e-1"
    assert command_key("router", "e-1", "rx", "1") == "router:e-1:rx:1"
    with pytest.raises(ValueError):
        command_key("router", "")


def test_a_worker_refuses_to_issue_a_command_without_a_key() -> None:
    router = Router(_Recorder())
    command = RoutePrescription(prescription_id=uuid4(), pharmacy_id="E1", basis=RoutingBasis.ROUTING_RULE)
    with pytest.raises(ValueError, match="command_id"):
        router.issue(command)
    keyed = command.model_copy(update={"command_id": router.key("e-1")})
    assert router.issue(keyed).ok and router.issue(keyed).replayed
    assert (router.stats.issued, router.stats.replayed) == (2, 1)


# --- the fields it reads: schema v2 and the v1 upcasters -----------------------------------------------------


def _as_v1(event: PrescriptionIssued | PharmacyDesignated, *drop: str) -> dict[str, object]:
    """The event as schema v1 wrote it (without the fields ``drop``), hashed as written."""
    data = json.loads(to_json(event))
    for name in drop:
        data.pop(name)
    data.update(schema_version=1, prev_hash=GENESIS_HASH)
    payload = {"event_type": type(event).__name__, **{k: v for k, v in data.items() if k != "hash"}}
    data["hash"] = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    return data


def test_issued_carries_the_patient_choice_and_v1_events_load_without_one() -> None:
    w = World()
    issued = w.issued(item(), preferred_pharmacy_id="PH-9").collect_events()[0]
    assert isinstance(issued, PrescriptionIssued)
    assert issued.schema_version == 3 and issued.preferred_pharmacy_id == "PH-9"  # v3: prescription_ref, R4 facts
    v1 = _as_v1(issued, "preferred_pharmacy_id")
    old = from_json("PrescriptionIssued", v1)
    assert isinstance(old, PrescriptionIssued)
    assert old.schema_version == 3 and old.preferred_pharmacy_id is None and old.prescription_ref is None
    assert event_hash(old) == old.hash and verify_stream([old]) is None


def test_designated_carries_a_drug_list_and_v1_events_load_without_one() -> None:
    w = World()
    event = Pharmacy.designate(clock=w.clock, changed_by="agency:220100", pharmacy_id="PH-7", name="Kangda",
                               pooling_region=REGION, agreement_no="A-7", drug_codes=[A, B]).collect_events()[0]
    assert isinstance(event, PharmacyDesignated)
    assert event.schema_version == 3 and event.drug_codes == (A, B)  # v3: registry facts and who changed them
    old = from_json("PharmacyDesignated", _as_v1(event, "drug_codes", "chronic_qualified", "payee_id", "changed_by",
                                                 "effective_from"))
    assert isinstance(old, PharmacyDesignated) and old.drug_codes is None and old.changed_by == "unrecorded"
    assert event_hash(old) == old.hash and verify_stream([old]) is None
