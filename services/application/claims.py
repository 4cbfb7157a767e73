"""From what the record says to a settlement :class:`~services.domain.settlement.Claim`, and from a split to the
settle command. Pure: the worker supplies the loaded aggregates, the patient's status and year-to-date figures.

A prescription settles on its dispensed lines (actual price and the R7 cap scanned at the counter), the
delivery fee (R6, always self-pay), the patient's insurance type and regions (R12), the dispenser's ownership
(R7: at a non-public dispenser the excess over the cap may come from the personal account).

A follow-up visit's consultation fee (R15) is paid only when the visit issued a prescription — the settlement worker
settles it when the visit's first prescription is approved (the region's provider terms,
``consultation_settles_on``) — and is priced as an ordinary outpatient consultation of the **treatment** region
(002 §三(五); 000 §四(三)): that region's price for the institution's level is the payment standard, so the fee is
settled as one covered (category A) line capped at that price, with the insured region's deductible, ratio, annual
cap and personal account (000 §四(四); R12). A public institution charging above the price is refused at the visit
(``services.domain.consultation``); what a non-public one charged above it is the patient's.

R12 (003 art. 19): an off-site visit without a long-term off-site registration valid on its day
(``FollowUpVisitRecorded.offsite_filing_valid`` is False) settles its consultation and its prescriptions with no
fund or personal-account payment.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.base import ZERO, CatalogCategory, InsuranceType, RealNameMethod
from events.encounter import FollowUpVisitRecorded
from events.prescription import PrescriptionIssued
from services.application.commands import SettleConsultation, SettlePrescription
from services.domain.prescription import Prescription
from services.domain.settlement import CategoryLookup, Claim, ClaimLine, Split, consultation_fee
from services.reference.policies import InstitutionLevel, RegionPolicy

CONSULTATION_CODE = "XCONSULTATION0000000"
"""The consultation as a claim line: a code in the drug-code shape that no real drug has (X + 19)."""


class SettlementConfig(BaseModel):
    """What the worker needs beyond the record. Every default is ILLUSTRATIVE configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    personal_account_balance: Decimal = Field(
        default=Decimal("2000.00"), ge=0,
        description="an employee's personal-account balance at the start of each year: no account feed exists, "
                    "so every employee gets this, less what the account paid this year (ledger)")
    default_institution_level: InstitutionLevel = Field(
        default=InstitutionLevel.TERTIARY,
        description="level of a physical institution not listed in institution_levels (prices the consultation)")
    institution_levels: dict[str, InstitutionLevel] = Field(default_factory=dict)

    def level_of(self, physical_institution_id: str) -> InstitutionLevel:
        return self.institution_levels.get(physical_institution_id, self.default_institution_level)

    def balance_left(self, insurance_type: InsuranceType, used_this_year: Decimal) -> Decimal:
        if insurance_type is not InsuranceType.EMPLOYEE:
            return ZERO
        return max(ZERO, self.personal_account_balance - used_this_year)


@dataclass(frozen=True)
class WithConsultation:
    """The treatment catalog plus the consultation line (always covered, category A)."""

    region_code: str
    catalog: CategoryLookup

    def category(self, code: str) -> CatalogCategory:
        return CatalogCategory.A if code == CONSULTATION_CODE else self.catalog.category(code)


def _settlement_price(line: Any) -> Decimal | None:
    """The price insurance settles a dispensed line on (R7): the line's own ``settlement_price`` when the event
    carries the registry's standard and cap, else its cap."""
    found = getattr(line, "settlement_price", None)
    if isinstance(found, Decimal):
        return found
    cap = getattr(line, "price_cap", None)
    return cap if isinstance(cap, Decimal) else None


def prescription_claim(rx: Prescription, issued: PrescriptionIssued, *, suspended: bool, balance: Decimal,
                       offsite_filing_valid: bool | None = None) -> Claim:
    """The claim for a delivered or collected prescription: every dispensed line, in dispense order."""
    items = {item.drug_code: item for item in rx.items}
    lines = []
    for number in sorted(rx.dispenses):
        for line in rx.dispenses[number]:
            item = items[line.drug_code]
            lines.append(ClaimLine(
                drug_code=line.drug_code, category=item.category, quantity=line.quantity,
                unit_price=line.unit_price, price_cap=_settlement_price(line), in_indication=not item.off_indication,
                patient_consent=item.patient_consent))
    return Claim(
        lines=tuple(lines), delivery_fee=rx.delivery_fee, insurance_type=rx.insurance_type,
        insured_region=rx.insured_region, treatment_region=rx.pooling_region,
        institution_ownership=rx.dispenser_ownership or rx.institution_ownership,
        diagnosis_code=issued.diagnosis_code, suspended_for_fraud=suspended, personal_account_balance=balance,
        offsite_filing_valid=offsite_filing_valid)


def consultation_claim(visit: FollowUpVisitRecorded, treatment_policy: RegionPolicy, level: InstitutionLevel, *,
                       suspended: bool, balance: Decimal) -> Claim:
    """R15: the treatment region's ordinary outpatient price for the level is the payment standard."""
    standard = consultation_fee(treatment_policy, level)
    return Claim(
        lines=(ClaimLine(drug_code=CONSULTATION_CODE, category=CatalogCategory.A, quantity=1,
                         unit_price=visit.consultation_fee, price_cap=standard),),
        insurance_type=visit.insurance_type, insured_region=visit.insured_region,
        treatment_region=visit.pooling_region, institution_ownership=visit.institution_ownership,
        diagnosis_code=visit.diagnosis_code, suspended_for_fraud=suspended, personal_account_balance=balance,
        offsite_filing_valid=getattr(visit, "offsite_filing_valid", None))


def settle_prescription(command_id: str, rx: Prescription, outcome: Split,
                        verification: RealNameMethod, payee_id: str | None = None) -> SettlePrescription:
    return SettlePrescription(
        payee_id=payee_id, deductible_applied=outcome.deductible_applied, fund_cap_applied=outcome.fund_cap_applied,
        command_id=command_id, prescription_id=rx.id, patient_ref=rx.patient_ref, verification_method=verification,
        fund=outcome.fund, personal_account=outcome.personal_account, self_pay=outcome.self_pay,
        delivery_fee=outcome.delivery_fee, policy_version=outcome.policy_version,
        policy_region=outcome.policy_region, catalog_region=outcome.catalog_region, settlement_ref=command_id)


def settle_consultation(command_id: str, visit: FollowUpVisitRecorded, outcome: Split) -> SettleConsultation:
    return SettleConsultation(
        deductible_applied=outcome.deductible_applied, fund_cap_applied=outcome.fund_cap_applied,
        command_id=command_id, encounter_id=visit.originator_id, patient_ref=visit.patient_ref,
        verification_method=visit.verification_method, fund=outcome.fund,
        personal_account=outcome.personal_account, self_pay=outcome.self_pay,
        policy_version=outcome.policy_version, policy_region=outcome.policy_region, settlement_ref=command_id)
