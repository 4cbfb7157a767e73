"""Command handlers: load, act, save — with idempotency keys, safe retries and batches.

``RxTrail.handle(command) -> Outcome`` is the one entry point the HTTP and Kafka layers call;
``RxTrail.apply_batch(commands) -> list[Outcome]`` applies many commands in one transaction.

Retries. A save that loses an optimistic-concurrency race (eventsourcing ``IntegrityError``: another
writer took the same aggregate version, the same derived id, or the same command id) is never re-sent as
it was: the whole handler runs again on freshly loaded aggregates, so every rule is checked against the
state that won (a dispense that lost to another dispense meets R13, a sale that lost to another sale of the
same trace code meets R8, a second registration meets ``AlreadyExists``). Commands that carry
``expected_version`` are refused with ``StaleVersion`` instead: the caller decided on a state that is gone.
A command id already in the outcome table ends the loop with the first outcome.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from pydantic import ValidationError

from events.base import EVENT_SIZE_MAX
from events.codec import to_json
from events.prescription import DispenserKind
from events.statement import FailureResolution, PartyKind, SubjectKind
from services.application import commands as c
from services.application.errors import ConcurrencyConflict
from services.application.ids import encounter_id_for, prescription_id_for
from services.application.outcomes import Outcome
from services.application.ports import EventStore, OutcomeRow
from services.application.privacy import PatientVault
from services.application.registries import REGISTRY_HANDLERS
from services.application.unit_of_work import UnitOfWork, event_refs
from services.domain.aggregate import Aggregate
from services.domain.clock import Clock, SystemClock
from services.domain.encounter import Encounter
from services.domain.errors import DomainError, InvalidCommand, PartyNotEligible, RuleViolation
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.prescription import Prescription
from services.domain.registries import (
    ChronicDiseaseList,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientInsurance,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    generic_code_of,
)
from services.domain.rules import R8
from services.domain.settlement_case import SettlementCase, case_id
from services.domain.supply import SupplyLedger
from services.domain.trace_code import TraceCode
from services.reference.policies import InstitutionLevel as PolicyLevel
from services.reference.policies import PolicyNotFound, load_policy

C = TypeVar("C", bound=c.Command)
Handler = Callable[[Any, Any, UnitOfWork], UUID]
_HANDLERS: dict[type[c.Command], Handler] = dict(REGISTRY_HANDLERS)


def handles(command_type: type[C]) -> Callable[[Callable[[RxTrail, C, UnitOfWork], UUID]], Any]:
    def register(func: Callable[[RxTrail, C, UnitOfWork], UUID]) -> Any:
        _HANDLERS[command_type] = func
        return func

    return register


class RxTrail:
    """The write side of rxtrail: one instance per process (it is thread-safe; each call has its own unit)."""

    def __init__(
        self,
        store: EventStore,
        vault: PatientVault,
        *,
        clock: Clock | None = None,
        rules: RuleConfig = DEFAULT_RULES,
        max_attempts: int = 8,
    ) -> None:
        self.store = store
        self.vault = vault
        self.clock: Clock = clock or SystemClock()
        self.rules = rules
        self.max_attempts = max_attempts

    def close(self) -> None:
        self.store.close()
        self.vault.close()

    # --- entry points -----------------------------------------------------------------------------
    def unit_for(self, command: c.Command, *, careful: bool = False) -> UnitOfWork:
        """A unit with every aggregate ``command`` addresses or creates loaded in one round trip (the access
        check reads from it, and ``handle(command, unit=...)`` applies the command on the same loaded state)."""
        uow = UnitOfWork(self.store, careful=careful)
        _prefetch(uow, [command], self.vault.patient_ref)
        return uow

    def handle(self, command: c.Command, *, unit: UnitOfWork | None = None) -> Outcome:
        """Apply one command; a refusal is an ``Outcome`` with status "rejected", never an exception.

        A keyed command is not looked up first: its outcome row is inserted in the same transaction as its
        events, so a repeat fails on the outcome table's primary key, rolls back, and returns the first outcome.
        ``unit``: the first attempt's unit, already loaded (``unit_for``); a retry always loads afresh.
        """
        for attempt in range(1, self.max_attempts + 1):
            uow = unit if attempt == 1 and unit is not None else self.unit_for(command, careful=attempt > 1)
            try:
                aggregate_id = self._run(command, uow)
            except (DomainError, ValidationError) as err:
                outcome = self._record_rejection(command, err)
            else:
                outcome = _ok(command, aggregate_id, uow)
                outcome = self._save(uow, [(command, outcome)])
            if outcome is not None:
                return outcome
            if command.command_id is not None and (first := self.recorded_outcome(command.command_id)):
                return first
            _backoff(attempt)
        return _rejected(command, ConcurrencyConflict(type(command).__name__, self.max_attempts))

    def apply_batch(self, commands: Sequence[c.Command]) -> list[Outcome]:
        """Apply commands in order in one transaction, with one outcome each.

        A refused command is rolled back alone (its outcome says why) and the others go on. If the
        transaction loses a race with another writer, the batch falls back to ``handle`` one by one.
        """
        ids = [cmd.command_id for cmd in commands if cmd.command_id is not None]
        recorded = self.recorded_outcomes(ids)
        uow = UnitOfWork(self.store, careful=False)
        _prefetch(uow, commands, self.vault.patient_ref)
        outcomes: list[Outcome] = []
        rows: list[tuple[c.Command, Outcome]] = []
        in_batch: dict[str, Outcome] = {}
        patients = [self.vault.patient_ref(cmd.patient.national_id) for cmd in commands
                    if isinstance(cmd, c.RecordFollowUpVisit) and cmd.command_id not in recorded]
        with _sealing_keys(self.vault, patients):  # the batch's patient keys in one round trip, not one each
            for command in commands:
                key = command.command_id
                if key is not None and key in recorded:
                    outcomes.append(recorded[key])
                    continue
                if key is not None and key in in_batch:
                    outcomes.append(in_batch[key].model_copy(update={"replayed": True}))
                    continue
                uow.begin()
                try:
                    aggregate_id = self._run(command, uow)
                    outcome = _ok(command, aggregate_id, uow)
                except (DomainError, ValidationError) as err:
                    uow.rollback()
                    self._after_rejection(command, err, uow)
                    outcome = _rejected(command, err, uow)
                outcomes.append(outcome)
                if key is not None:
                    in_batch[key] = outcome
                    rows.append((command, outcome))
        try:
            self._write(uow, rows)
        except IntegrityError:
            return [self.handle(command) for command in commands]
        return outcomes

    def recorded_outcome(self, command_id: str) -> Outcome | None:
        return self.recorded_outcomes([command_id]).get(command_id)

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, Outcome]:
        rows = self.store.recorded_outcomes(list(dict.fromkeys(command_ids)))
        return {
            key: Outcome.model_validate_json(text).model_copy(update={"replayed": True}) for key, text in rows.items()
        }

    def history(self, aggregate_id: UUID, *, up_to: int | None = None) -> list[Any]:
        """The recorded events of one aggregate, oldest first (``up_to``: up to that version); [] if none."""
        return list(self.store.events_of(aggregate_id, lte=up_to))

    # --- machinery --------------------------------------------------------------------------------
    def _run(self, command: c.Command, uow: UnitOfWork) -> UUID:
        try:
            handler = _HANDLERS[type(command)]
        except KeyError:
            raise TypeError(f"no handler for {type(command).__name__}") from None
        aggregate_id = handler(self, command, uow)
        _check_sizes(uow)
        return aggregate_id

    def _record_rejection(self, command: c.Command, err: Exception) -> Outcome | None:
        """Record what a refusal leaves behind (a fraud flag, the outcome of a keyed command); None = retry."""
        uow = UnitOfWork(self.store)
        self._after_rejection(command, err, uow)
        outcome = _rejected(command, err, uow)
        if command.command_id is None and not uow.changed():
            return outcome
        return self._save(uow, [(command, outcome)])

    def _after_rejection(self, command: c.Command, err: Exception, uow: UnitOfWork) -> None:
        """R8 is "reject + flag": the refused sale is recorded on the prescription that attempted it."""
        if not (isinstance(err, RuleViolation) and err.rule_id == R8):
            return
        if not isinstance(command, c.DispensePrescription):
            return
        if uow.in_batch:
            uow.begin()
        try:
            rx = uow.require(Prescription, command.prescription_id)
            rx.record_flag(clock=self.clock, violation=err)
        except DomainError:
            if uow.in_batch:
                uow.rollback()

    def _save(self, uow: UnitOfWork, results: list[tuple[c.Command, Outcome]]) -> Outcome | None:
        """Write the unit; the outcome of a single command, or None when it lost a race."""
        try:
            self._write(uow, [(cmd, out) for cmd, out in results if cmd.command_id is not None])
        except IntegrityError:
            return None
        return results[0][1]

    def _write(self, uow: UnitOfWork, results: list[tuple[c.Command, Outcome]]) -> None:
        rows = [
            OutcomeRow(cmd.command_id, type(cmd).__name__, out.status, out.model_dump_json())
            for cmd, out in results
            if cmd.command_id is not None
        ]
        changed = uow.changed()
        if changed or rows:
            self.store.save(*changed, command_outcomes=rows)

    # --- hospitals -------------------------------------------------------------------------------
    @handles(c.RecordFollowUpVisit)
    def _record_follow_up_visit(self, cmd: c.RecordFollowUpVisit, uow: UnitOfWork) -> UUID:
        """R17: the institutions and the patient's insurance come from the registries, not the request."""
        encounter_id = encounter_id_for(cmd.hospital_id, cmd.visit_ref)
        uow.expect_new(Encounter, encounter_id, "encounter", f"{cmd.hospital_id}/{cmd.visit_ref}")
        physician = uow.get(Physician, Physician.id_for(cmd.physician_id))
        patient_ref = self.vault.patient_ref(cmd.patient.national_id)
        hospital, physical = self._institutions(cmd.hospital_id, uow)
        personal = {"name": cmd.patient.name, "id_number": cmd.patient.national_id}
        if cmd.patient.phone:
            personal["phone"] = cmd.patient.phone
        encounter = Encounter.record(
            clock=self.clock,
            hospital_id=cmd.hospital_id,
            hospital=hospital,
            physical=physical,
            original_institution=uow.get(Institution, Institution.id_for(cmd.original_institution_id)),
            insurance=uow.get(PatientInsurance, PatientInsurance.id_for(patient_ref)),
            declared={name: getattr(cmd, name) for name in c.VISIT_REGISTRY_FACTS},
            consultation_standard=self._consultation_standard(hospital, physical),
            patient_ref=patient_ref,
            patient_sealed=self.vault.seal(patient_ref, personal),
            physician_id=cmd.physician_id,
            physician=physician,
            physician_signature=cmd.physician_signature,
            diagnosis_code=cmd.diagnosis_code,
            diagnosis_name=cmd.diagnosis_name,
            original_diagnosis_code=cmd.original_diagnosis_code,
            original_diagnosis_date=cmd.original_diagnosis_date,
            original_institution_id=cmd.original_institution_id,
            verification_method=cmd.verification_method,
            consultation_fee=cmd.consultation_fee,
            rules=self.rules,
            encounter_id=encounter_id,
        )
        uow.add(encounter)
        return encounter_id

    @handles(c.IssuePrescription)
    def _issue_prescription(self, cmd: c.IssuePrescription, uow: UnitOfWork) -> UUID:
        """R4 across prescriptions: the patient's supply ledger of each generic drug is saved with the prescription,
        so two issues at once for the same patient and generic cannot both pass (one loses the version race and
        runs again against the other's reservation)."""
        prescription_id = prescription_id_for(cmd.hospital_id, cmd.prescription_ref)
        uow.expect_new(Prescription, prescription_id, "prescription", f"{cmd.hospital_id}/{cmd.prescription_ref}")
        encounter = uow.require(Encounter, cmd.encounter_id)
        if encounter.hospital_id != cmd.hospital_id:
            raise PartyNotEligible("hospital", cmd.hospital_id, "the visit belongs to another hospital")
        hospital, physical = self._institutions(cmd.hospital_id, uow)
        rx = Prescription.issue(
            clock=self.clock,
            encounter=encounter,
            hospital=hospital,
            physical=physical,
            original_institution=uow.get(Institution, Institution.id_for(encounter.original_institution_id)),
            physician=uow.get(Physician, Physician.id_for(encounter.physician_id)),
            physician_signature=cmd.physician_signature,
            prescription_ref=cmd.prescription_ref,
            items=cmd.items,
            first_visit_drug_codes=cmd.first_visit_drug_codes,
            justification=cmd.justification,
            chronic_list=uow.get(ChronicDiseaseList, ChronicDiseaseList.id_for(encounter.pooling_region)),
            emergencies=uow.get(EmergencyDeclarations, EmergencyDeclarations.id_for(encounter.pooling_region)),
            preferred_pharmacy_id=cmd.preferred_pharmacy_id,
            rules=self.rules,
            prescription_id=prescription_id,
        )
        uow.add(rx)
        generic_of = self._generic_codes(rx, uow)
        for ledger in rx.reserve_supply(clock=self.clock, generic_of=generic_of,
                                        ledgers=self._supply_ledgers(rx, generic_of, uow), rules=self.rules):
            uow.add(ledger)
        return prescription_id

    @handles(c.CancelPrescription)
    def _cancel(self, cmd: c.CancelPrescription, uow: UnitOfWork) -> UUID:
        rx = self._rx(cmd, uow)
        rx.cancel(clock=self.clock, reason=cmd.reason, cancelled_by=cmd.cancelled_by)
        self._release_supply(rx, uow, "cancelled")
        return cmd.prescription_id

    @handles(c.ExtendValidity)
    def _extend_validity(self, cmd: c.ExtendValidity, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).extend_validity(clock=self.clock, physician_id=cmd.physician_id,
                                           valid_until=cmd.valid_until, reason=cmd.reason, rules=self.rules)
        return cmd.prescription_id

    @handles(c.ExpirePrescription)
    def _expire(self, cmd: c.ExpirePrescription, uow: UnitOfWork) -> UUID:
        rx = self._rx(cmd, uow)
        rx.expire(clock=self.clock)
        self._release_supply(rx, uow, "expired")
        return cmd.prescription_id

    # --- pharmacists ------------------------------------------------------------------------------
    @handles(c.ApprovePrescription)
    def _approve(self, cmd: c.ApprovePrescription, uow: UnitOfWork) -> UUID:
        pharmacist = uow.require(Pharmacist, Pharmacist.id_for(cmd.pharmacist_id), key=cmd.pharmacist_id)
        self._rx(cmd, uow).approve(clock=self.clock, pharmacist=pharmacist)
        return cmd.prescription_id

    @handles(c.RejectPrescription)
    def _reject(self, cmd: c.RejectPrescription, uow: UnitOfWork) -> UUID:
        pharmacist = uow.require(Pharmacist, Pharmacist.id_for(cmd.pharmacist_id), key=cmd.pharmacist_id)
        rx = self._rx(cmd, uow)
        rx.reject(clock=self.clock, pharmacist=pharmacist, reasons=cmd.reasons)
        self._release_supply(rx, uow, "rejected")
        return cmd.prescription_id

    # --- routing ------------------------------------------------------------------------------------
    @handles(c.RoutePrescription)
    def _route(self, cmd: c.RoutePrescription, uow: UnitOfWork) -> UUID:
        rx = self._rx(cmd, uow)
        pharmacy = None
        if cmd.pharmacy_id is not None:
            pharmacy = uow.require(Pharmacy, Pharmacy.id_for(cmd.pharmacy_id), key=cmd.pharmacy_id)
        chosen = None
        if rx.preferred_pharmacy_id is not None and rx.preferred_pharmacy_id != cmd.pharmacy_id:
            chosen = uow.get(Pharmacy, Pharmacy.id_for(rx.preferred_pharmacy_id))
        rx.route(clock=self.clock, pharmacy=pharmacy, basis=cmd.basis, chosen=chosen)
        return cmd.prescription_id

    # --- pharmacies ---------------------------------------------------------------------------------
    @handles(c.AcceptPrescription)
    def _accept(self, cmd: c.AcceptPrescription, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).accept(clock=self.clock, dispenser_id=cmd.dispenser_id)
        return cmd.prescription_id

    @handles(c.ReturnPrescription)
    def _return(self, cmd: c.ReturnPrescription, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).decline(clock=self.clock, dispenser_id=cmd.dispenser_id, reason=cmd.reason)
        return cmd.prescription_id

    @handles(c.DispensePrescription)
    def _dispense(self, cmd: c.DispensePrescription, uow: UnitOfWork) -> UUID:
        """R8 across the platform: the prescription and every scanned code's aggregate commit together."""
        rx = self._rx(cmd, uow)
        codes = [code for line in cmd.lines for code in line.trace_codes]
        held = uow.get_many(TraceCode, [TraceCode.id_for(code) for code in codes])
        scanned = {code: held[TraceCode.id_for(code)] for code in codes}
        drugs = list(dict.fromkeys(line.drug_code for line in cmd.lines))
        listed = uow.get_many(DrugListing, [DrugListing.id_for(code) for code in drugs])
        listings = {code: listed[DrugListing.id_for(code)] for code in drugs}
        pharmacy = None
        if rx.dispenser_kind is DispenserKind.PHARMACY:
            pharmacy = uow.require(Pharmacy, Pharmacy.id_for(cmd.dispenser_id), key=cmd.dispenser_id)
        for sold in rx.dispense(clock=self.clock, dispenser_id=cmd.dispenser_id, lines=cmd.lines, trace_codes=scanned,
                                listings=listings, pharmacy=pharmacy, rules=self.rules):
            uow.add(sold)
        return cmd.prescription_id

    @handles(c.ReturnPacks)
    def _return_packs(self, cmd: c.ReturnPacks, uow: UnitOfWork) -> UUID:
        """The packs' codes go back to stock in the same transaction as the prescription's event (R8)."""
        rx = self._rx(cmd, uow)
        codes = list(dict.fromkeys(cmd.trace_codes))
        held = uow.get_many(TraceCode, [TraceCode.id_for(code) for code in codes])
        found = {code: tc for code in codes if (tc := held[TraceCode.id_for(code)]) is not None}
        for released in rx.return_packs(clock=self.clock, dispenser_id=cmd.dispenser_id, codes=codes,
                                        reason=cmd.reason, trace_codes=found):
            uow.add(released)
        return cmd.prescription_id

    @handles(c.WithdrawDispense)
    def _withdraw(self, cmd: c.WithdrawDispense, uow: UnitOfWork) -> UUID:
        rx = self._rx(cmd, uow)
        codes = [code for line in rx.dispenses.get(cmd.dispense_no, ()) for code in line.trace_codes]
        uow.prefetch(TraceCode, [TraceCode.id_for(code) for code in codes])
        held = {code: uow.require(TraceCode, TraceCode.id_for(code), key=code) for code in codes}
        for returned in rx.withdraw_dispense(
            clock=self.clock, dispense_no=cmd.dispense_no, reason=cmd.reason, trace_codes=held
        ):
            uow.add(returned)
        return cmd.prescription_id

    @handles(c.ArrangeDelivery)
    def _arrange_delivery(self, cmd: c.ArrangeDelivery, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).arrange_delivery(
            clock=self.clock,
            delivery_enterprise_id=cmd.delivery_enterprise_id,
            delivery_fee=cmd.delivery_fee,
            fee_disclosed=cmd.fee_disclosed,
            address_ref=self.vault.address_ref(cmd.delivery_address) if cmd.delivery_address else None,
        )
        return cmd.prescription_id

    @handles(c.MarkDelivered)
    def _deliver(self, cmd: c.MarkDelivered, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).deliver(clock=self.clock, delivery_enterprise_id=cmd.delivery_enterprise_id)
        return cmd.prescription_id

    @handles(c.MarkCollected)
    def _collect(self, cmd: c.MarkCollected, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).collect(clock=self.clock, verification_method=cmd.verification_method)
        return cmd.prescription_id

    # --- agency -------------------------------------------------------------------------------------
    @handles(c.SettlePrescription)
    def _settle(self, cmd: c.SettlePrescription, uow: UnitOfWork) -> UUID:
        rx = uow.require(Prescription, cmd.prescription_id, expected_version=cmd.expected_version)
        rx.settle(
            clock=self.clock,
            patient=uow.get(PatientStatus, PatientStatus.id_for(rx.patient_ref)),
            patient_ref=self._settling_ref(cmd),
            verification_method=cmd.verification_method,
            fund=cmd.fund,
            personal_account=cmd.personal_account,
            self_pay=cmd.self_pay,
            delivery_fee=cmd.delivery_fee,
            policy_version=cmd.policy_version,
            policy_region=cmd.policy_region,
            catalog_region=cmd.catalog_region,
            settlement_ref=cmd.settlement_ref,
            rules=self.rules,
            payee_id=cmd.payee_id,
            deductible_applied=cmd.deductible_applied,
            fund_cap_applied=cmd.fund_cap_applied,
        )
        return cmd.prescription_id

    @handles(c.SettleConsultation)
    def _settle_consultation(self, cmd: c.SettleConsultation, uow: UnitOfWork) -> UUID:
        encounter = uow.require(Encounter, cmd.encounter_id)
        encounter.settle_consultation(
            clock=self.clock,
            patient=uow.get(PatientStatus, PatientStatus.id_for(encounter.patient_ref)),
            patient_ref=self._settling_ref(cmd),
            verification_method=cmd.verification_method,
            fund=cmd.fund,
            personal_account=cmd.personal_account,
            self_pay=cmd.self_pay,
            policy_version=cmd.policy_version,
            policy_region=cmd.policy_region,
            settlement_ref=cmd.settlement_ref,
            rules=self.rules,
            deductible_applied=cmd.deductible_applied,
            fund_cap_applied=cmd.fund_cap_applied,
        )
        return cmd.encounter_id

    @handles(c.RefuseFeesInAudit)
    def _refuse_fees(self, cmd: c.RefuseFeesInAudit, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).refuse_fees(clock=self.clock, amount=cmd.amount, reason=cmd.reason, audit_ref=cmd.audit_ref,
                                       acted_by=cmd.acted_by, also_taken=self._reversed(uow, cmd.prescription_id))
        return cmd.prescription_id

    @handles(c.ClawBackFees)
    def _claw_back(self, cmd: c.ClawBackFees, uow: UnitOfWork) -> UUID:
        self._rx(cmd, uow).claw_back(clock=self.clock, amount=cmd.amount, reason=cmd.reason, audit_ref=cmd.audit_ref,
                                     acted_by=cmd.acted_by, also_taken=self._reversed(uow, cmd.prescription_id))
        return cmd.prescription_id

    # --- money: settlement cases (issue 14; services/domain/settlement_case.py) ------------------------
    def _reversed(self, uow: UnitOfWork, prescription_id: UUID) -> Decimal:
        case = uow.get(SettlementCase, case_id(SubjectKind.PRESCRIPTION, prescription_id))
        return case.reversed if case is not None else Decimal("0.00")

    def _case(self, uow: UnitOfWork, kind: SubjectKind, subject_id: UUID) -> SettlementCase:
        """The subject's settlement case, opened in this transaction when it is the first."""
        case = uow.get(SettlementCase, case_id(kind, subject_id))
        if case is not None:
            return case
        subject: Prescription | Encounter = (uow.require(Prescription, subject_id) if kind is SubjectKind.PRESCRIPTION
                                             else uow.require(Encounter, subject_id))
        case = SettlementCase.open(clock=self.clock, business_type=subject.business_type, subject_kind=kind,
                                   subject_id=subject_id, pooling_region=subject.pooling_region,
                                   hospital_id=subject.hospital_id,
                                   physical_institution_id=subject.physical_institution_id)
        uow.add(case)
        return case

    @handles(c.RecordSettlementFailure)
    def _settlement_failed(self, cmd: c.RecordSettlementFailure, uow: UnitOfWork) -> UUID:
        case = self._case(uow, cmd.subject_kind, cmd.subject_id)
        case.fail(clock=self.clock, rule_id=cmd.rule_id, error=cmd.error, reason=cmd.reason, trigger=cmd.trigger)
        return case.id

    @handles(c.RetrySettlement)
    def _retry_settlement(self, cmd: c.RetrySettlement, uow: UnitOfWork) -> UUID:
        case = self._case(uow, cmd.subject_kind, cmd.subject_id)
        case.resolve(clock=self.clock, resolution=FailureResolution.RETRIED, reason=cmd.reason,
                     resolved_by=cmd.acted_by or "agency")
        return case.id

    @handles(c.WriteOffSettlement)
    def _write_off_settlement(self, cmd: c.WriteOffSettlement, uow: UnitOfWork) -> UUID:
        case = self._case(uow, cmd.subject_kind, cmd.subject_id)
        case.resolve(clock=self.clock, resolution=FailureResolution.WRITTEN_OFF, reason=cmd.reason,
                     resolved_by=cmd.acted_by or "agency")
        return case.id

    @handles(c.ReverseSettlement)
    def _reverse_settlement(self, cmd: c.ReverseSettlement, uow: UnitOfWork) -> UUID:
        zero = Decimal("0.00")
        case = self._case(uow, cmd.subject_kind, cmd.subject_id)
        if cmd.subject_kind is SubjectKind.PRESCRIPTION:
            rx = uow.require(Prescription, cmd.subject_id)
            if rx.fund is None or rx.personal_account is None:
                raise InvalidCommand("the prescription is not settled: nothing to reverse", prescription_id=rx.id)
            paid_fund, paid_pa, taken = rx.fund, rx.personal_account, rx.refused + rx.clawed_back
            pharmacy = rx.dispenser_kind is DispenserKind.PHARMACY and rx.dispenser_id is not None
            party_id = rx.dispenser_id if pharmacy and rx.dispenser_id else rx.physical_institution_id
            party_kind = PartyKind.PHARMACY if pharmacy else PartyKind.PHYSICAL_INSTITUTION
        else:
            enc = uow.require(Encounter, cmd.subject_id)
            if not enc.settled:
                raise InvalidCommand("the consultation is not settled: nothing to reverse", encounter_id=enc.id)
            paid_fund, paid_pa, taken = enc.settled_fund, enc.settled_personal_account, zero
            party_id, party_kind = enc.physical_institution_id, PartyKind.PHYSICAL_INSTITUTION
        left = paid_fund + paid_pa - taken - case.refused - case.clawed_back - case.reversed
        fund = cmd.fund if cmd.fund is not None else min(paid_fund - case.reversed_fund, max(left, zero))
        personal = (cmd.personal_account if cmd.personal_account is not None
                    else min(paid_pa - case.reversed_personal_account, max(left - fund, zero)))
        case.reverse(clock=self.clock, party_id=party_id, party_kind=party_kind, paid_fund=paid_fund,
                     paid_personal_account=paid_pa, taken_elsewhere=taken, fund=fund, personal_account=personal,
                     self_pay_refund=cmd.self_pay_refund, reason=cmd.reason, reversed_by=cmd.acted_by or "agency",
                     reversal_ref=cmd.reversal_ref)
        return case.id

    def _settled_consultation(self, uow: UnitOfWork, encounter_id: UUID) -> tuple[SettlementCase, Decimal]:
        enc = uow.require(Encounter, encounter_id)
        if not enc.settled:
            raise InvalidCommand("the consultation is not settled: nothing to refuse or claw back",
                                 encounter_id=encounter_id)
        return self._case(uow, SubjectKind.CONSULTATION, encounter_id), enc.settled_fund + enc.settled_personal_account

    @handles(c.RefuseConsultationFees)
    def _refuse_consultation(self, cmd: c.RefuseConsultationFees, uow: UnitOfWork) -> UUID:
        case, paid = self._settled_consultation(uow, cmd.encounter_id)
        case.refuse_consultation(clock=self.clock, paid=paid, amount=cmd.amount, reason=cmd.reason,
                                 audit_ref=cmd.audit_ref, acted_by=cmd.acted_by or "agency")
        return case.id

    @handles(c.ClawBackConsultationFees)
    def _claw_back_consultation(self, cmd: c.ClawBackConsultationFees, uow: UnitOfWork) -> UUID:
        case, paid = self._settled_consultation(uow, cmd.encounter_id)
        case.claw_back_consultation(clock=self.clock, paid=paid, amount=cmd.amount, reason=cmd.reason,
                                    audit_ref=cmd.audit_ref, acted_by=cmd.acted_by or "agency")
        return case.id

    # --- registries: services/application/registries.py (REGISTRY_HANDLERS) ------------------------------

    # --- helpers ------------------------------------------------------------------------------------
    def _rx(self, cmd: c.PrescriptionCommand, uow: UnitOfWork) -> Prescription:
        return uow.require(Prescription, cmd.prescription_id, expected_version=cmd.expected_version)

    @staticmethod
    def _institutions(hospital_id: str, uow: UnitOfWork) -> tuple[Institution | None, Institution | None]:
        """The internet hospital and its physical institution as the registry holds them (None: not registered)."""
        hospital = uow.get(Institution, Institution.id_for(hospital_id))
        physical_id = hospital.physical_institution_id if hospital is not None else None
        physical = uow.get(Institution, Institution.id_for(physical_id)) if physical_id else None
        return hospital, physical

    def _consultation_standard(self, hospital: Institution | None, physical: Institution | None) -> Decimal | None:
        """R15: the treatment region's ordinary outpatient consultation price for the physical institution's level,
        from the region's policy in force today (None: no policy for the region)."""
        if hospital is None or physical is None:
            return None
        try:
            policy = load_policy(hospital.region, as_of=self.rules.local_date(self.clock.now()))
        except PolicyNotFound:
            return None
        return policy.consultation_fee.get(PolicyLevel(physical.level.value))

    @staticmethod
    def _generic_codes(rx: Prescription, uow: UnitOfWork) -> dict[str, str]:
        """R4: each item's generic drug from the drug catalog (a drug not listed: the generic its national code
        names, ``generic_code_of``)."""
        listings = uow.get_many(DrugListing, [DrugListing.id_for(i.drug_code) for i in rx.items])
        found = {listing.drug_code: listing.generic_code for listing in listings.values() if listing is not None}
        return {i.drug_code: found.get(i.drug_code) or generic_code_of(i.drug_code) for i in rx.items}

    @staticmethod
    def _supply_ledgers(
        rx: Prescription, generic_of: dict[str, str], uow: UnitOfWork
    ) -> dict[str, SupplyLedger | None]:
        generics = sorted(set(generic_of.values()))
        held = uow.get_many(SupplyLedger, [SupplyLedger.id_for(rx.patient_ref, g) for g in generics])
        return {g: held[SupplyLedger.id_for(rx.patient_ref, g)] for g in generics}

    def _release_supply(self, rx: Prescription, uow: UnitOfWork, reason: str) -> None:
        """R4: a prescription that ended (rejected, cancelled, expired, remainder closed) gives back its days."""
        generic_of = self._generic_codes(rx, uow)
        for ledger in rx.release_supply(clock=self.clock, generic_of=generic_of,
                                        ledgers=self._supply_ledgers(rx, generic_of, uow), reason=reason):
            uow.add(ledger)

    def _settling_ref(self, cmd: c.SettlePrescription | c.SettleConsultation) -> str:
        if cmd.patient_ref is not None:
            return cmd.patient_ref
        if cmd.patient_national_id is None:
            raise ValueError("settlement without a patient key")  # the command model makes this unreachable
        return self.vault.patient_ref(cmd.patient_national_id)


def _ok(command: c.Command, aggregate_id: UUID, uow: UnitOfWork) -> Outcome:
    return Outcome(
        command_type=type(command).__name__,
        command_id=command.command_id,
        status="ok",
        aggregate_id=aggregate_id,
        events=event_refs(uow.command_events()),
    )


def _rejected(command: c.Command, err: Exception, uow: UnitOfWork | None = None) -> Outcome:
    if isinstance(err, ValidationError):
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_input=False)
        )
        error, rule_id, ids = "InvalidCommand", None, {}
    else:
        reason = getattr(err, "reason", None) or str(err)
        error, rule_id = type(err).__name__, getattr(err, "rule_id", None)
        ids = dict(getattr(err, "ids", {}) or {})
    return Outcome(
        command_type=type(command).__name__,
        command_id=command.command_id,
        status="rejected",
        aggregate_id=_addressed(command),
        events=event_refs(uow.command_events()) if uow is not None else (),
        error=error,
        rule_id=rule_id,
        reason=reason,
        ids=ids,
    )


def _sealing_keys(vault: PatientVault, patient_refs: Sequence[str]) -> AbstractContextManager[None]:
    """The key store's batch scope when it has one (PostgreSQL: ``PostgresPatientKeyStore.batch``), else nothing."""
    batch = getattr(vault.keys, "batch", None)
    return batch(patient_refs) if batch is not None and patient_refs else nullcontext()


def _prefetch(uow: UnitOfWork, commands: Sequence[c.Command], patient_ref: Callable[[str], str] | None = None) -> None:
    """Everything a batch (or one command) addresses, creates or reads, in at most three round trips whatever the
    batch's size: (1) what the commands name (so creations are checked for duplicates without a read each), with the
    registry facts they name; (2) what those aggregates name (the visit's physician and region, the hospital's
    physical institution, the patient's ledgers and status); (3) supply ledgers of generics the drug catalog names
    differently from the drug code. Loading is all it does: handlers still ``get`` what they read.

    With an event store that holds aggregates (``RxTrailStore.cache``), phases 2 and 3 are asked for in the first
    round trip too, as the held states name them; what the loaded states name differently is read after."""
    held = getattr(getattr(uow.store, "cache", None), "peek", None)
    wanted: dict[type[Aggregate], list[UUID]] = {kind: [] for kind in _PREFETCHED}
    for cmd in commands:
        _named(cmd, wanted, patient_ref)
        if held is not None:
            _read_through(cmd, held, wanted)
            _supply_keys(cmd, held, wanted)
    uow.prefetch_all(wanted)
    for phase in (_read_through, _supply_keys):
        wanted = {kind: [] for kind in _PREFETCHED}
        for cmd in commands:
            phase(cmd, uow.peek, wanted)
        if phase is _read_through and patient_ref is not None and len(commands) > 1:
            _made_in_batch(commands, patient_ref, uow.peek, wanted)
        uow.prefetch_all(wanted)  # no round trip when everything is loaded already


_PREFETCHED: tuple[type[Aggregate], ...] = (
    Prescription, Encounter, Physician, Pharmacist, Pharmacy, TraceCode, Institution, PatientInsurance, DrugListing,
    ChronicDiseaseList, EmergencyDeclarations, PatientStatus, SupplyLedger,
)


def _named(cmd: c.Command, wanted: dict[type[Aggregate], list[UUID]],
           patient_ref: Callable[[str], str] | None) -> None:
    """The aggregates a command names by itself (phase 1 of ``_prefetch``)."""
    if isinstance(cmd, c.PrescriptionCommand | c.SettlePrescription):
        wanted[Prescription].append(cmd.prescription_id)
    elif isinstance(cmd, c.IssuePrescription):
        wanted[Prescription].append(prescription_id_for(cmd.hospital_id, cmd.prescription_ref))
        wanted[Encounter].append(cmd.encounter_id)
        wanted[Institution].append(Institution.id_for(cmd.hospital_id))
        wanted[DrugListing].extend(DrugListing.id_for(i.drug_code) for i in cmd.items)
    elif isinstance(cmd, c.SettleConsultation):
        wanted[Encounter].append(cmd.encounter_id)
    elif isinstance(cmd, c.RecordFollowUpVisit):
        wanted[Encounter].append(encounter_id_for(cmd.hospital_id, cmd.visit_ref))
        wanted[Physician].append(Physician.id_for(cmd.physician_id))
        wanted[Institution].append(Institution.id_for(cmd.hospital_id))
        wanted[Institution].append(Institution.id_for(cmd.original_institution_id))
        if patient_ref is not None:
            wanted[PatientInsurance].append(PatientInsurance.id_for(patient_ref(cmd.patient.national_id)))
    elif isinstance(cmd, c.RegisterPhysician | c.SuspendPhysician | c.ReinstatePhysician):
        wanted[Physician].append(Physician.id_for(cmd.physician_id))
    elif isinstance(cmd, c.RegisterPharmacist):
        wanted[Pharmacist].append(Pharmacist.id_for(cmd.pharmacist_id))
    elif isinstance(cmd, c.DesignatePharmacy | c.SuspendPharmacyAgreement):
        wanted[Pharmacy].append(Pharmacy.id_for(cmd.pharmacy_id))
    if isinstance(cmd, c.ApprovePrescription | c.RejectPrescription):
        wanted[Pharmacist].append(Pharmacist.id_for(cmd.pharmacist_id))
    if isinstance(cmd, c.RoutePrescription) and cmd.pharmacy_id is not None:
        wanted[Pharmacy].append(Pharmacy.id_for(cmd.pharmacy_id))
    if isinstance(cmd, c.DispensePrescription):
        wanted[TraceCode].extend(TraceCode.id_for(code) for line in cmd.lines for code in line.trace_codes)
        wanted[DrugListing].extend(DrugListing.id_for(line.drug_code) for line in cmd.lines)
        wanted[Pharmacy].append(Pharmacy.id_for(cmd.dispenser_id))


Peek = Callable[[UUID], Aggregate | None]


def _read_through(cmd: c.Command, peek: Peek, wanted: dict[type[Aggregate], list[UUID]]) -> None:
    """The aggregates a command reads through the ones it names (phase 2 of ``_prefetch``)."""
    hospital_id: str | None = None
    if isinstance(cmd, c.RecordFollowUpVisit):
        hospital_id = cmd.hospital_id
    elif isinstance(cmd, c.IssuePrescription):
        hospital_id = cmd.hospital_id
        encounter = peek(cmd.encounter_id)
        if isinstance(encounter, Encounter):
            wanted[Physician].append(Physician.id_for(encounter.physician_id))
            wanted[Institution].append(Institution.id_for(encounter.original_institution_id))
            wanted[ChronicDiseaseList].append(ChronicDiseaseList.id_for(encounter.pooling_region))
            wanted[EmergencyDeclarations].append(EmergencyDeclarations.id_for(encounter.pooling_region))
            wanted[SupplyLedger].extend(SupplyLedger.id_for(encounter.patient_ref, generic_code_of(i.drug_code))
                                        for i in cmd.items)
    elif isinstance(cmd, c.PrescriptionCommand | c.SettlePrescription | c.SettleConsultation):
        rx = peek(cmd.encounter_id if isinstance(cmd, c.SettleConsultation) else cmd.prescription_id)
        if isinstance(rx, Prescription | Encounter) and isinstance(cmd, c.SettlePrescription | c.SettleConsultation):
            wanted[PatientStatus].append(PatientStatus.id_for(rx.patient_ref))
        if isinstance(rx, Prescription) and isinstance(cmd, c.RoutePrescription) and rx.preferred_pharmacy_id:
            wanted[Pharmacy].append(Pharmacy.id_for(rx.preferred_pharmacy_id))
        if isinstance(rx, Prescription) and isinstance(cmd, _RELEASING):
            wanted[DrugListing].extend(DrugListing.id_for(i.drug_code) for i in rx.items)
            wanted[SupplyLedger].extend(SupplyLedger.id_for(rx.patient_ref, generic_code_of(i.drug_code))
                                        for i in rx.items)
    hospital = peek(Institution.id_for(hospital_id)) if hospital_id is not None else None
    if isinstance(hospital, Institution) and hospital.physical_institution_id:
        wanted[Institution].append(Institution.id_for(hospital.physical_institution_id))


def _made_in_batch(commands: Sequence[c.Command], patient_ref: Callable[[str], str], peek: Peek,
                   wanted: dict[type[Aggregate], list[UUID]]) -> None:
    """A batch that records a visit and then issues and settles on it (a whole trail): the patient's supply ledgers
    and status, which phase 2 cannot find through a visit that is not stored yet."""
    patients: dict[UUID, str] = {}
    for cmd in commands:
        if isinstance(cmd, c.RecordFollowUpVisit):
            patients[encounter_id_for(cmd.hospital_id, cmd.visit_ref)] = patient_ref(cmd.patient.national_id)
        elif isinstance(cmd, c.IssuePrescription) and (patient := patients.get(cmd.encounter_id)) is not None:
            patients[prescription_id_for(cmd.hospital_id, cmd.prescription_ref)] = patient
            for item in cmd.items:
                listing = peek(DrugListing.id_for(item.drug_code))
                generic = listing.generic_code if isinstance(listing, DrugListing) else None
                wanted[SupplyLedger].append(SupplyLedger.id_for(patient, generic or generic_code_of(item.drug_code)))
        elif isinstance(cmd, c.SettlePrescription | c.SettleConsultation):
            subject = cmd.prescription_id if isinstance(cmd, c.SettlePrescription) else cmd.encounter_id
            if (patient := patients.get(subject)) is not None:
                wanted[PatientStatus].append(PatientStatus.id_for(patient))


_RELEASING = (c.CancelPrescription, c.RejectPrescription, c.ExpirePrescription)


def _supply_keys(cmd: c.Command, peek: Peek, wanted: dict[type[Aggregate], list[UUID]]) -> None:
    """The ledgers (patient_ref, generic) an issue reserves or an ending releases, by the catalog's generic
    (phase 3 of ``_prefetch``; the ones already loaded in phase 2 are not read again)."""
    holder = None
    if isinstance(cmd, c.IssuePrescription):
        holder, items = peek(cmd.encounter_id), cmd.items
    elif isinstance(cmd, _RELEASING):
        holder = peek(cmd.prescription_id)
        items = holder.items if isinstance(holder, Prescription) else ()
    if not isinstance(holder, Encounter | Prescription):
        return
    for item in items:
        listing = peek(DrugListing.id_for(item.drug_code))
        if isinstance(listing, DrugListing) and listing.generic_code:
            wanted[SupplyLedger].append(SupplyLedger.id_for(holder.patient_ref, listing.generic_code))


def _addressed(command: c.Command) -> UUID | None:
    for name in ("prescription_id", "encounter_id"):
        value = getattr(command, name, None)
        if isinstance(value, UUID):
            return value
    return None


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))


def _check_sizes(uow: UnitOfWork) -> None:
    """Refuse (InvalidCommand, 422) a command whose events would not fit a Kafka message. The bounded types of the
    commands keep every valid command far below EVENT_SIZE_MAX; this is the check behind them, before anything is
    saved, so no event the relay cannot publish is ever recorded."""
    for event in uow.command_events():
        size = len(to_json(event))
        if size > EVENT_SIZE_MAX:
            raise InvalidCommand(f"the command's {type(event).__name__} event would be {size} bytes; "
                                 f"at most {EVENT_SIZE_MAX} bytes fit a message", size=size)
