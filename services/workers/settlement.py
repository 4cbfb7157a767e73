"""The settlement worker: `rx.events` → settle commands (SettlePrescription, SettleConsultation).

Triggers:
- ``PrescriptionDelivered`` / ``PrescriptionCollected`` (and ``PrescriptionDispensed`` complete at the hospital,
  should the prescription already accept settlement then) → settle the prescription with the party that
  dispensed it (pharmacy, or the hospital's physical institution); the agency pays the delivery enterprise instead
  of the pharmacy where the treatment region's provider terms say so (Jinan, 004 §六: ``payee_id``);
- ``PrescriptionApproved`` → R15: the visit issued a prescription, so its consultation fee is settled with the
  physical institution — once per visit (keyed by the visit), on its first approved prescription; a visit with
  no approved prescription is never paid;
- ``SettlementFailureResolved`` with ``retried`` → the agency asked to try a failed settlement again.

Nothing silent (DOMAIN.md, Settlement): a settlement that cannot be computed (no policy, an out-of-catalog line
without consent, …) or that the aggregate refuses is recorded as ``SettlementFailed`` (rule id, reason) on the
subject's settlement case, which the agency sees in ``GET /agency/settlement-issues`` and resolves.

A ``CommandWorker`` (``services.workers.base``). Each command is keyed by the triggering event:
``command_id = "settle:" + event_id`` (the relay's deterministic event id), so a redelivered or republished
trigger gets the first outcome back and records nothing. The aggregates themselves settle at most once
(optimistic concurrency), whatever triggers race.

State (schema ``settlement_worker``, ``services.adapters.settlement_state``, written in the consumer loop's
transaction together with the offsets):
``patients`` (R11 status from ``PatientSuspendedForFraud`` / ``PatientReinstated``) and ``ledger`` (one row per
settled prescription or visit: patient, year, fund, personal account, deductible counted), whose sums per patient
and year are the year-to-date figures. A command is issued before the batch commits: a crash in between
re-processes the trigger and meets the recorded outcome. The ledger row is written when the worker issues the
command (so two claims of one patient in one batch see each other) and corrected by the settled event.

Not known from the record, so configuration (:class:`SettlementConfig`, ILLUSTRATIVE): the personal-account
balance (a default per employee per year, less what the account paid this year) and institution levels.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from events.base import ZERO, RealNameMethod
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.prescription import (
    DispenserKind,
    PrescriptionApproved,
    PrescriptionCollected,
    PrescriptionDelivered,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionSettled,
)
from events.registries import PatientReinstated, PatientSuspendedForFraud
from events.statement import FailureResolution, SettlementFailureResolved, SettlementReversed, SubjectKind
from projections.base import Delivered
from services.adapters import settlement_state as state
from services.application import RxTrail
from services.application.claims import (
    SettlementConfig,
    WithConsultation,
    consultation_claim,
    prescription_claim,
    settle_consultation,
    settle_prescription,
)
from services.application.commands import Command, RecordSettlementFailure
from services.application.outcomes import Outcome
from services.application.unit_of_work import UnitOfWork
from services.domain.aggregate import project_all
from services.domain.encounter import Encounter
from services.domain.errors import DomainError
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.prescription import Prescription, RxStatus
from services.domain.registries import Institution
from services.domain.rules import R11
from services.domain.settlement import RegionCatalog, Split, YearToDate, split
from services.reference import Reference, ReferenceNotFound, load_reference
from services.reference.policies import InstitutionLevel, PayeeKind, PolicyNotFound, load_policy, provider_terms
from services.workers.base import CommandWorker, command_key, in_log_order

log = logging.getLogger("rxtrail.settlement")

SETTLEABLE = frozenset({RxStatus.DELIVERED, RxStatus.COLLECTED})
KEY_PREFIX = "settle"
SUSPENDED_RETRY = ":R11"
"""Suffix of the one retry after an R11 refusal (the suspension reached the record before this worker's table)."""


def command_id_for(event_id: str) -> str:
    """``settle:<event id>`` (``services.workers.base.command_key``)."""
    return command_key(KEY_PREFIX, event_id)


@dataclass
class _Plan:
    """One trigger made ready to issue: everything but the year-to-date figures."""

    command_id: str
    aggregate_id: UUID
    patient_ref: str
    insurance_type: Any
    build: Any  # (YearToDate, balance, suspended) -> (Split, Command)
    subject_kind: SubjectKind = SubjectKind.PRESCRIPTION


class SettlementWorker(CommandWorker):
    """A command worker on the shared loop (a :class:`projections.base.Projection`: the loop owns Kafka, offsets
    and the transaction). ``stats.recorded`` counts settlements recorded, ``stats.skipped`` triggers that called
    for none."""

    name = state.SCHEMA
    app: RxTrail

    def __init__(self, app: RxTrail, config: SettlementConfig | None = None, *, reference: Reference | None = None,
                 rules: RuleConfig = DEFAULT_RULES) -> None:
        super().__init__(app)
        self.config = config or SettlementConfig()
        self.rules = rules
        self._catalog: Reference = reference or load_reference()

    def key(self, event_id: str, *qualifiers: str) -> str:
        return command_key(KEY_PREFIX, event_id, *qualifiers)

    # --- Projection protocol ------------------------------------------------------------------------
    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        state.create_tables(conn, schema)

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        batch = in_log_order(batch)  # a suspension recorded before a delivery is seen before it
        self._patients(conn, schema, batch)
        self._settled(conn, schema, batch)
        triggers = [d for d in batch if self._is_trigger(d)]
        if triggers:
            self._issue(conn, schema, triggers)

    # --- state from events ----------------------------------------------------------------------------
    def _patients(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        for d in batch:
            e = d.event
            if isinstance(e, PatientSuspendedForFraud):
                state.suspend(conn, schema, d.aggregate_id, e.patient_ref, e.until)
            elif isinstance(e, PatientReinstated):
                state.reinstate(conn, schema, d.aggregate_id)

    def _settled(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        rows = [(d.aggregate_id, d.event.patient_ref, self._year(d.timestamp), d.event.fund,
                 d.event.personal_account, d.event.deductible_applied if d.event.deductible_applied else None)
                for d in batch if isinstance(d.event, PrescriptionSettled | ConsultationSettled)]
        state.record_settled(conn, schema, rows)
        state.reverse(conn, schema, [(d.event.subject_id, d.event.fund, d.event.personal_account)
                                     for d in batch if isinstance(d.event, SettlementReversed)])

    # --- triggers ---------------------------------------------------------------------------------------
    @staticmethod
    def _is_trigger(d: Delivered) -> bool:
        e = d.event
        if isinstance(e, PrescriptionDelivered | PrescriptionCollected | PrescriptionApproved):
            return True
        if isinstance(e, SettlementFailureResolved):
            return e.resolution is FailureResolution.RETRIED
        return isinstance(e, PrescriptionDispensed) and e.complete

    def _trigger_key(self, d: Delivered) -> str:
        """The command key: the triggering event, except a consultation, keyed by its visit (settled once)."""
        e = d.event
        if isinstance(e, PrescriptionApproved):
            return self.key(f"consultation-{self._encounter_of(d.aggregate_id)}")
        return self.key(d.event_id)

    def _encounter_of(self, prescription_id: UUID) -> UUID | None:
        issued = next(iter(self.app.history(prescription_id, up_to=1)), None)
        return issued.encounter_id if isinstance(issued, PrescriptionIssued) else None

    def _issue(self, conn: psycopg.Connection[Any], schema: str, triggers: Sequence[Delivered]) -> None:
        ids = [self._trigger_key(d) for d in triggers]
        recorded = self.recall([*ids, *(i + SUSPENDED_RETRY for i in ids)])
        plans: list[_Plan] = []
        seen: set[str] = set()
        for d, command_id in zip(triggers, ids, strict=True):
            if command_id in recorded or command_id in seen:
                continue
            seen.add(command_id)
            try:
                plan = self._plan(d, command_id)
            except (DomainError, PolicyNotFound, ReferenceNotFound, ValueError) as exc:
                self._failed(*self._subject(d), command_id, exc)
                continue
            if isinstance(plan, str):
                if d.event_type != "PrescriptionDispensed":  # hospital hand-over comes later: not worth a row
                    self._skip(conn, schema, command_id, d.aggregate_id, plan)
                continue
            plans.append(plan)
        for round_ in _rounds(plans):
            self._issue_round(conn, schema, round_)

    def _subject(self, d: Delivered) -> tuple[SubjectKind, UUID | None]:
        e = d.event
        if isinstance(e, SettlementFailureResolved):
            return e.subject_kind, e.subject_id
        if isinstance(e, PrescriptionApproved):
            return SubjectKind.CONSULTATION, self._encounter_of(d.aggregate_id)
        return SubjectKind.PRESCRIPTION, d.aggregate_id

    def _plan(self, d: Delivered, command_id: str) -> _Plan | str:
        """What to issue for a trigger, or why nothing is issued."""
        kind, subject = self._subject(d)
        if subject is None:
            return "the prescription's visit is not in the event store"
        if kind is SubjectKind.CONSULTATION:
            visit = next(iter(self.app.history(subject, up_to=1)), None)
            if not isinstance(visit, FollowUpVisitRecorded):
                return "visit not in the event store"
            return self._plan_consultation(visit, command_id)
        hospital_dispense = isinstance(d.event, PrescriptionDispensed)
        return self._plan_prescription(subject, command_id, hospital_dispense=hospital_dispense)

    def _plan_prescription(self, prescription_id: UUID, command_id: str, *, hospital_dispense: bool = False
                           ) -> _Plan | str:
        events = self.app.history(prescription_id)
        if not events:
            return "prescription not in the event store"
        rx = project_all(Prescription, events)
        if hospital_dispense and rx.dispenser_kind is not DispenserKind.HOSPITAL:
            return "dispensed by a pharmacy: settled on delivery or collection"
        if rx.status not in SETTLEABLE:
            return f"prescription is {rx.status.value}, not delivered or collected"
        issued = events[0]
        if not isinstance(issued, PrescriptionIssued):
            return "prescription stream does not start with PrescriptionIssued"
        visit = next(iter(self.app.history(rx.encounter_id, up_to=1)), None)
        verification = self._verification(events, visit)
        filing = getattr(visit, "offsite_filing_valid", None)
        today = self.rules.local_date(self.app.clock.now())
        policy = load_policy(rx.insured_region, as_of=today)
        catalog = RegionCatalog(rx.pooling_region, self._catalog)
        payee = None
        if (rx.dispenser_kind is DispenserKind.PHARMACY and rx.delivery_enterprise_id is not None
                and provider_terms(rx.pooling_region, today).pharmacy_payee is PayeeKind.DELIVERY_ENTERPRISE):
            payee = rx.delivery_enterprise_id  # Jinan: the supply/delivery enterprise is paid (004 §六)

        def build(ytd: YearToDate, balance: Decimal, suspended: bool) -> tuple[Split, Command]:
            claim = prescription_claim(rx, issued, suspended=suspended, balance=balance, offsite_filing_valid=filing)
            outcome = split(claim, policy, catalog, ytd)
            return outcome, settle_prescription(command_id, rx, outcome, verification, payee)

        return _Plan(command_id, rx.id, rx.patient_ref, rx.insurance_type, build)

    def _plan_consultation(self, visit: FollowUpVisitRecorded, command_id: str) -> _Plan | str:
        events = self.app.history(visit.originator_id)
        if not events:
            return "visit not in the event store"
        if not isinstance(events[0], FollowUpVisitRecorded):
            return "not an encounter"
        encounter = project_all(Encounter, events)
        if encounter.settled:
            return "consultation already settled"
        today = self.rules.local_date(self.app.clock.now())
        policy = load_policy(visit.insured_region, as_of=today)
        treatment = load_policy(visit.pooling_region, as_of=today)  # R15: the treatment region's price
        catalog = WithConsultation(visit.pooling_region, self._catalog)
        level = self._level(visit.physical_institution_id)

        def build(ytd: YearToDate, balance: Decimal, suspended: bool) -> tuple[Split, Command]:
            claim = consultation_claim(visit, treatment, level, suspended=suspended, balance=balance)
            outcome = split(claim, policy, catalog, ytd)
            return outcome, settle_consultation(command_id, visit, outcome)

        return _Plan(command_id, visit.originator_id, visit.patient_ref, visit.insurance_type, build,
                     SubjectKind.CONSULTATION)

    def _level(self, physical_institution_id: str) -> InstitutionLevel:
        """R15/R17: the physical institution's level from the registry (what the visit's price check used), else
        the configuration's."""
        found = UnitOfWork(self.app.store).get(Institution, Institution.id_for(physical_institution_id))
        if found is not None:
            try:
                return InstitutionLevel(found.level.value)
            except ValueError:
                pass
        return self.config.level_of(physical_institution_id)

    @staticmethod
    def _verification(events: Iterable[Any], visit: Any) -> RealNameMethod:
        """R9 evidence: the collection's verification, else the visit's (delivery to the verified patient)."""
        collected = [e for e in events if isinstance(e, PrescriptionCollected)]
        if collected:
            return collected[-1].verification_method
        if isinstance(visit, FollowUpVisitRecorded):
            return visit.verification_method
        return RealNameMethod.E_VOUCHER

    def _issue_round(self, conn: psycopg.Connection[Any], schema: str, plans: Sequence[_Plan]) -> None:
        """Issue one command per patient at most, against the ledger as it stands (earlier rounds included)."""
        year = self._year(self.app.clock.now())
        patients = {p.patient_ref for p in plans}
        ytd = state.year_to_date(conn, schema, year, patients)
        suspended = state.suspended(conn, schema, patients, self.rules.local_date(self.app.clock.now()))
        ready: list[tuple[_Plan, Split, Command]] = []
        for plan in plans:
            figures = ytd.get(plan.patient_ref, state.Spent())
            try:
                outcome, command = plan.build(
                    YearToDate(deductible_met=figures.deductible, fund_paid=figures.fund),
                    self.config.balance_left(plan.insurance_type, figures.personal_account),
                    plan.patient_ref in suspended)
            except (DomainError, ValueError) as exc:
                self._failed(plan.subject_kind, plan.aggregate_id, plan.command_id, exc)
                continue
            ready.append((plan, outcome, command))
        if not ready:
            return
        outcomes = self.issue_batch([command for _, _, command in ready])
        retry: list[tuple[_Plan, Split, Command]] = []
        for (plan, outcome, _), result in zip(ready, outcomes, strict=True):
            if result.ok:
                self._booked(conn, schema, plan, outcome, year)
            elif result.rule_id == R11 and not plan.command_id.endswith(SUSPENDED_RETRY):
                retry.append(self._without_insurance(plan, ytd.get(plan.patient_ref, state.Spent())))
            else:
                self._rejected(conn, schema, plan, result)
        for (plan, outcome, command) in retry:
            result = self.issue(command)
            if result.ok:
                self._booked(conn, schema, plan, outcome, year)
            else:
                self._rejected(conn, schema, plan, result)

    @staticmethod
    def _without_insurance(plan: _Plan, figures: state.Spent) -> tuple[_Plan, Split, Command]:
        """The one retry after an R11 refusal: the patient is suspended, under the retry's own key."""
        again = _Plan(plan.command_id + SUSPENDED_RETRY, plan.aggregate_id, plan.patient_ref, plan.insurance_type,
                      plan.build, plan.subject_kind)
        outcome, command = again.build(YearToDate(deductible_met=figures.deductible, fund_paid=figures.fund), ZERO,
                                       True)
        return again, outcome, command.model_copy(update={"command_id": again.command_id,
                                                          "settlement_ref": again.command_id})

    def _booked(self, conn: psycopg.Connection[Any], schema: str, plan: _Plan, outcome: Split, year: int) -> None:
        state.book(conn, schema, plan.aggregate_id, plan.patient_ref, year, outcome.fund, outcome.personal_account,
                   outcome.deductible_applied)

    def _rejected(self, conn: psycopg.Connection[Any], schema: str, plan: _Plan, result: Outcome) -> None:
        if result.error == "IllegalTransition" and "settled" in (result.reason or ""):
            return  # settled already (another trigger won): nothing failed
        log.warning("settlement %s of %s refused: %s %s", plan.command_id, plan.aggregate_id, result.error,
                    result.rule_id or "")
        self._record_failure(plan.subject_kind, plan.aggregate_id, plan.command_id, result.rule_id,
                             result.error or "Refused", result.reason or "refused")

    def _failed(self, kind: SubjectKind, subject: UUID | None, command_id: str, exc: Exception) -> None:
        self._record_failure(kind, subject, command_id, getattr(exc, "rule_id", None), type(exc).__name__,
                             getattr(exc, "reason", None) or str(exc))

    def _record_failure(self, kind: SubjectKind, subject: UUID | None, command_id: str, rule_id: str | None,
                        error: str, reason: str) -> None:
        """``SettlementFailed`` on the subject's settlement case (the agency's queue), once per trigger."""
        self.stats.skipped += 1
        if subject is None:
            log.error("settlement %s failed and its subject is unknown: %s", command_id, error)
            return
        outcome = self.issue(RecordSettlementFailure(
            command_id=command_id + ":failed", subject_kind=kind, subject_id=subject, rule_id=rule_id,
            error=error[:64], reason=(reason or error)[:2000], trigger=command_id[:64]))
        if not outcome.ok:
            log.error("settlement failure of %s could not be recorded: %s %s", subject, outcome.error, outcome.reason)

    def _skip(self, conn: psycopg.Connection[Any], schema: str, command_id: str, aggregate_id: UUID, reason: str,
              *, count: bool = True) -> None:
        if count:
            self.stats.skipped += 1
            log.info("settlement trigger %s (%s): nothing issued: %s", command_id, aggregate_id, reason)
        state.skip(conn, schema, command_id, aggregate_id, reason)

    def _year(self, at: datetime) -> int:
        return self.rules.local_date(at).year


def _rounds(plans: Sequence[_Plan]) -> list[list[_Plan]]:
    """Split plans so each round has at most one per patient (the n-th claim of each patient in round n)."""
    seen: dict[str, int] = defaultdict(int)
    rounds: list[list[_Plan]] = []
    for plan in plans:
        n = seen[plan.patient_ref]
        seen[plan.patient_ref] += 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(plan)
    return rounds
