"""Idempotency keys and the batch entry point, on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from events.prescription import RoutingBasis, RuleFlagged
from services.adapters.event_log import load_stream
from services.adapters.store import OUTCOMES_TABLE
from services.application import RxTrail
from services.application import commands as c
from services.application.ids import encounter_id_for
from services.application.unit_of_work import UnitOfWork
from services.domain.clock import FixedClock
from services.domain.prescription import RxStatus, project_prescription
from tests.support import unique_id
from tests.support.cast import METFORMIN, T0, Cast, item, line, new_app, ok, physician_command, trace_codes


@pytest.fixture
def cast(app: RxTrail) -> Cast:
    return Cast(app).register()


def count_events(app: RxTrail, aggregate_id: Any) -> int:
    return len(app.store.events.recorder.select_events(aggregate_id))


def test_same_command_id_returns_the_first_outcome_and_records_nothing_new(app: RxTrail, cast: Cast) -> None:
    rx = cast.issued()
    command = c.ApprovePrescription(command_id=unique_id("cmd"), prescription_id=rx, pharmacist_id=cast.pharmacist)
    first = ok(app.handle(command))
    assert not first.replayed and count_events(app, rx) == 2
    again = app.handle(command)
    assert again.replayed and again.model_dump(exclude={"replayed"}) == first.model_dump(exclude={"replayed"})
    assert count_events(app, rx) == 2
    other_instance = new_app(app.store, app.vault)
    assert other_instance.handle(command).replayed


def test_a_recorded_rejection_is_replayed_even_when_the_state_has_changed(app: RxTrail, cast: Cast) -> None:
    rx = cast.issued()
    pharmacist = unique_id("RPH")
    command = c.ApprovePrescription(command_id=unique_id("cmd"), prescription_id=rx, pharmacist_id=pharmacist)
    refused = app.handle(command)
    assert (refused.status, refused.error) == ("rejected", "PharmacistNotFound")
    ok(app.handle(c.RegisterPharmacist(changed_by=cast.authority, pharmacist_id=pharmacist, employer_id=cast.hospital,
                                       name="n", qualification_no="q")))
    replay = app.handle(command)
    assert replay.replayed and (replay.status, replay.error) == ("rejected", "PharmacistNotFound")
    fresh = app.handle(command.model_copy(update={"command_id": unique_id("cmd")}))
    assert fresh.ok


def test_outcome_and_events_commit_together(app: RxTrail, cast: Cast, pg_url: str) -> None:
    rx = cast.issued()
    key = unique_id("cmd")
    ok(app.handle(c.ApprovePrescription(command_id=key, prescription_id=rx, pharmacist_id=cast.pharmacist)))
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(f"SELECT command_type, status, outcome FROM {OUTCOMES_TABLE} WHERE command_id = %s",
                           (key,)).fetchone()
    assert row is not None and row[0] == "ApprovePrescription" and row[1] == "ok"
    assert row[2]["events"][0]["event_type"] == "PrescriptionApproved"


def test_batch_applies_in_order_and_a_refusal_does_not_poison_the_others(app: RxTrail, cast: Cast) -> None:
    visit = cast.visit(command_id=unique_id("cmd"))
    encounter_id = encounter_id_for(visit.hospital_id, visit.visit_ref)
    issue = cast.issue(encounter_id, item(METFORMIN, 4), command_id=unique_id("cmd"))
    from services.application.ids import prescription_id_for

    rx = prescription_id_for(issue.hospital_id, issue.prescription_ref)
    batch: list[c.Command] = [
        visit,
        issue,
        c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy, basis=RoutingBasis.PATIENT_CHOICE),
        c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist, command_id=unique_id("cmd")),
        c.RoutePrescription(prescription_id=rx, pharmacy_id="no-such-pharmacy", basis=RoutingBasis.ROUTING_RULE),
        c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy, basis=RoutingBasis.PATIENT_CHOICE),
        physician_command(cast.physician, cast.hospital, cast.region),
    ]
    batch.append(batch[3])  # the same command id twice in one batch
    outcomes = app.apply_batch(batch)
    assert [(o.status, o.error, o.rule_id) for o in outcomes] == [
        ("ok", None, None),
        ("ok", None, None),
        ("rejected", "RuleViolation", "R3"),
        ("ok", None, None),
        ("rejected", "PharmacyNotFound", None),
        ("ok", None, None),
        ("rejected", "AlreadyExists", None),
        ("ok", None, None),
    ]
    assert outcomes[-1].replayed and not outcomes[3].replayed
    # R4: the issue reserves the patient's running supply in the same unit (the ledger's own stream)
    assert [e.event_type for e in outcomes[1].events] == ["PrescriptionIssued", "SupplyReserved"]
    assert [type(e).__name__ for e in load_stream(app.store, rx)] == [
        "PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted"]

    again = app.apply_batch(batch[:2])
    assert all(o.replayed for o in again) and count_events(app, rx) == 3


def test_batch_r8_rejects_the_second_sale_and_flags_it(app: RxTrail, cast: Cast) -> None:
    first, second = cast.accepted(), cast.accepted()
    shared = trace_codes(1)[0]
    outcomes = app.apply_batch([
        c.DispensePrescription(prescription_id=first, dispenser_id=cast.pharmacy,
                               lines=(line(METFORMIN, 4, codes=(shared, *trace_codes(3))),)),
        c.DispensePrescription(prescription_id=second, dispenser_id=cast.pharmacy,
                               lines=(line(METFORMIN, 4, codes=(shared, *trace_codes(3))),)),
        c.MarkCollected(prescription_id=first, verification_method="e_voucher"),
    ])
    assert [(o.status, o.rule_id) for o in outcomes] == [("ok", None), ("rejected", "R8"), ("ok", None)]
    assert [e.event_type for e in outcomes[1].events] == ["RuleFlagged"]
    flags = [e for e in load_stream(app.store, second) if isinstance(e, RuleFlagged)]
    assert [f.rule_id for f in flags] == ["R8"]
    state = app.store.repository.get(second, projector_func=project_prescription)
    assert state.status is RxStatus.ACCEPTED and state.dispenses == {}


class RacedRxTrail(RxTrail):
    """The real handlers, with another writer slipping in just before the batch's transaction."""

    def __init__(self, *args: Any, interloper: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interloper: Callable[[], None] | None = interloper

    def _write(self, uow: UnitOfWork, results: list[Any]) -> None:
        if self.interloper is not None:
            interloper, self.interloper = self.interloper, None
            interloper()
        super()._write(uow, results)


def test_batch_that_loses_a_race_falls_back_to_one_by_one(app: RxTrail, cast: Cast) -> None:
    cast.patient_per_visit = True  # three patients: one patient's three 28-day prescriptions exceed R4's 56 days
    rxs = [cast.issued() for _ in range(3)]
    other = new_app(app.store, app.vault)
    raced = RacedRxTrail(
        app.store, app.vault, clock=FixedClock(T0),
        interloper=lambda: ok(other.handle(c.CancelPrescription(prescription_id=rxs[1], reason="duplicate",
                                                                 cancelled_by=cast.hospital))),
    )
    outcomes = raced.apply_batch([
        c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist, command_id=unique_id("cmd"))
        for rx in rxs
    ])
    assert [(o.status, o.error) for o in outcomes] == [("ok", None), ("rejected", "IllegalTransition"), ("ok", None)]
    statuses = [app.store.repository.get(rx, projector_func=project_prescription).status for rx in rxs]
    assert statuses == [RxStatus.APPROVED, RxStatus.CANCELLED, RxStatus.APPROVED]
