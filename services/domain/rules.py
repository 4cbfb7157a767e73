"""The rule catalogue: every rule the platform enforces or flags, and one named check per rule.

规则目录。Each rule is one entry in ``_CATALOGUE`` (id, title, source in the policy texts of DOMAIN.md, reject or
flag, its parameters in :class:`~services.domain.policy.RuleConfig`, whether the code enforces it yet) and one or
more ``check_rN_*`` functions below (``flag_rN_*`` for a rule that records instead of refusing). The aggregates call
these checks; nothing else in the domain builds a :class:`RuleViolation` or names a rule id. ``rxtrail rules``
prints the catalogue and the API serves it at ``GET /rules``.

Adding a rule touches three files: its entry and check here, the aggregate command that calls the check, and a
test in ``tests/unit/test_rules.py`` (see ARCHITECTURE.md, "Adding a rule").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict

from events.base import ZERO, BusinessType, Ownership
from services.domain.errors import InvalidCommand, RuleViolation, ValidityElapsed
from services.domain.policy import DEFAULT_RULES, RuleConfig, add_months
from services.domain.signature import verifies

if TYPE_CHECKING:
    from events.prescription import DispensedLine, PrescriptionItem
    from services.domain.clock import Clock
    from services.domain.registries import Institution, PatientStatus, Pharmacist, Physician
    from services.domain.trace_code import TraceCode


_Fact = TypeVar("_Fact")

# --- ids ---------------------------------------------------------------------------------------------
R1: Final = "R1"
R2: Final = "R2"
R3: Final = "R3"
R4: Final = "R4"
R5: Final = "R5"
R6: Final = "R6"
R7: Final = "R7"
R8: Final = "R8"
R9: Final = "R9"
R10: Final = "R10"
R11: Final = "R11"
R12: Final = "R12"
R13: Final = "R13"
R14: Final = "R14"
R15: Final = "R15"
R16: Final = "R16"
R17: Final = "R17"
R18: Final = "R18"
R19: Final = "R19"


class RuleKind(StrEnum):
    REJECT = "reject"  # the command is refused; nothing is recorded but the rejection
    FLAG = "flag"  # the command goes through; a RuleFlagged event reports it to auditors
    REJECT_AND_FLAG = "reject+flag"  # refused, and the refused attempt is flagged (or flagged where it is not refused)


SEED_FILES: Final[Mapping[str, str]] = MappingProxyType({
    "000": "000_900a0efc36f4404e.txt",  # Jilin province notice 吉医保发〔2020〕80号
    "001": "001_bd2ec2501ea62354.txt",  # Chuxiong prefecture measures 楚医保规〔2022〕3号
    "002": "002_71fcdb40d2ec7612.txt",  # NHSA guidance 医保发〔2020〕45号
    "003": "003_ba2713e3c06f819a.txt",  # Jinan internet-hospital insurance agreement 济医保字〔2020〕17号
    "004": "004_dcd39b4139b253d4.txt",  # Jinan city measures 济医保发〔2020〕15号
})
_SEED_REF = re.compile(r"\b(00[0-4])\b")


class Parameter(BaseModel):
    """A configurable number of a rule: a field of ``RuleConfig`` and its value in the configuration shown."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: int
    description: str


class Rule(BaseModel):
    """One catalogue entry. ``source`` cites the policy texts as DOMAIN.md does ("003 art. 13"); ``seed_files``
    are the files under shared/seeds/ it cites; ``note`` says what of the rule is not (yet) enforced."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    source: str
    seed_files: tuple[str, ...]
    kind: RuleKind
    parameters: tuple[Parameter, ...] = ()
    enforced: bool
    note: str = ""


def _rule(
    rule_id: str,
    title: str,
    source: str,
    kind: RuleKind,
    *,
    parameters: Sequence[str] = (),
    enforced: bool = True,
    note: str = "",
) -> tuple[str, str, str, RuleKind, tuple[str, ...], bool, str]:
    return rule_id, title, source, kind, tuple(parameters), enforced, note


REJECT, FLAG, BOTH = RuleKind.REJECT, RuleKind.FLAG, RuleKind.REJECT_AND_FLAG

# --- the catalogue (DOMAIN.md, "Rules the platform enforces or flags") ----------------------------------
_CATALOGUE = (
    _rule(R1, "Online visit is a follow-up of the same disease diagnosed offline within the window",
          "001 art. 26; 002 §二(二)5", REJECT,
          parameters=("follow_up_window_months", "local_utc_offset_hours")),
    _rule(R2, "Prescription carries the physician's e-signature; physician registered and not suspended",
          "000 §五(三)2; 001 art. 19, 23", REJECT),
    _rule(R3, "No routing, dispensing or settlement before pharmacist approval",
          "001 art. 23; 003 art. 14", REJECT),
    _rule(R4, "Long prescriptions only for a stable chronic disease on the region's list: at most 8 weeks' supply, "
              "3 months during a public-health emergency the authority declared; counted per patient and generic "
              "drug across every running prescription",
          "003 art. 13", REJECT, parameters=("ordinary_rx_max_days", "long_rx_max_days", "emergency_max_days")),
    _rule(R5, "Follow-up prescription's drugs do not exceed the first-visit prescription's unless justified",
          "003 art. 13", FLAG),
    _rule(R6, "Delivery fee stated to the patient in advance, never paid by the fund or personal account",
          "002 §三(四); 000 §四(三); 001 art. 13; 003 art. 16; 004 §七", REJECT),
    _rule(R7, "An internet hospital sells a drug at most at its price cap (refused above it); a retail pharmacy is "
              "paid by the fund at most on the payment standard (flagged above the cap); caps and standards are the "
              "registry's on the day of the dispense",
          "003 art. 16; 001 art. 8, 11", BOTH),
    _rule(R8, "One 20-digit drug traceability code per pack, each sold once (a split pack by its units); a second "
              "scan is suspected fraud",
          "001 art. 29, 31", BOTH),
    _rule(R9, "The person served is the person settling; real-name verification recorded",
          "003 art. 7; 004 §七", REJECT),
    _rule(R10, "Out-of-catalog or out-of-indication drugs are self-pay with recorded patient consent",
          "003 art. 15", REJECT),
    _rule(R11, "A patient suspended for fraud gets no insurance payment online",
          "002 §五(十三)", REJECT, parameters=("local_utc_offset_hours",)),
    _rule(R12, "Off-site patients settle by the insured region's policy and the treatment region's catalog, with "
               "fund payment only after a long-term off-site registration (长期异地就医备案) valid on the day",
          "003 art. 19", REJECT,
          note="the visit records whether the registration was valid on its day (offsite_filing_valid); "
               "the settlement applies it"),
    _rule(R13, "Dispensed quantity never exceeds the prescribed; a prescription is dispensed in full at most once",
          "trail integrity (002 §二(二)4; 001 art. 29)", REJECT),
    _rule(R14, "Online, offline and off-site business are always distinguishable",
          "000 §三(一)3; 002 §二(二)6", REJECT),
    _rule(R15, "Only a follow-up that issued a prescription has its consultation fee paid, at most the "
               "region's outpatient consultation price",
          "002 §三(四)(五); 000 §四(三); 001 art. 8, 9, 13", REJECT,
          note="paid only when a prescription is issued: the settlement worker settles the consultation on the "
               "visit's first approved prescription"),
    _rule(R16, "The original diagnosis was made offline, not at the internet hospital, and R1 holds on the day "
               "each prescription is issued",
          "001 art. 26; 002 §二(二)5", REJECT),
    _rule(R17, "Facts that decide money or eligibility are read from the authority's registries, never taken "
               "from the paid party's request",
          "002 §二(一), §三; 003 art. 16, 19", REJECT),
    _rule(R18, "A third-party pharmacist reviews only for hospitals it has a cooperation agreement with (an "
               "employed pharmacist only for its employer)",
          "001 art. 23; 003 art. 14", REJECT),
    _rule(R19, "A prescription is valid for a limited time after issue, extendable by its physician to at most "
               "validity_days after issue; expired prescriptions are not routed or dispensed, expire on their own "
               "and the pharmacy's feed says so",
          "national prescription rules (处方管理办法 art. 18, outside the seeds)", REJECT,
          parameters=("validity_days",)),
)


def catalogue(config: RuleConfig = DEFAULT_RULES) -> list[Rule]:
    """Every rule in id order, its parameters valued from ``config``."""
    fields = type(config).model_fields
    return [
        Rule(
            id=rule_id,
            title=title,
            source=source,
            seed_files=tuple(SEED_FILES[n] for n in dict.fromkeys(_SEED_REF.findall(source))),
            kind=kind,
            parameters=tuple(
                Parameter(name=name, value=getattr(config, name), description=fields[name].description or "")
                for name in parameters
            ),
            enforced=enforced,
            note=note,
        )
        for rule_id, title, source, kind, parameters, enforced, note in _CATALOGUE
    ]


RULES: Final[Mapping[str, Rule]] = MappingProxyType({rule.id: rule for rule in catalogue()})


# --- the checks ---------------------------------------------------------------------------------------
# Named check_<rule>_<what> (raise RuleViolation) or flag_<rule>_<what> (return the findings to record).


def same_disease(code_a: str, code_b: str) -> bool:
    """同种疾病：ICD-10 类目（小数点前三位）相同，如 E11.9 与 E11.65。"""
    return code_a.strip().upper().split(".")[0] == code_b.strip().upper().split(".")[0]


def check_r1_follow_up(
    *, diagnosis_code: str, original_diagnosis_code: str, original_diagnosis_date: date, today: date,
    rules: RuleConfig,
) -> None:
    """R1: same disease, diagnosed offline, not in the future and within the window (calendar months)."""
    if not same_disease(diagnosis_code, original_diagnosis_code):
        raise RuleViolation(
            R1,
            "online visit is not a follow-up of the same disease diagnosed offline",
            diagnosis_code=diagnosis_code,
            original_diagnosis_code=original_diagnosis_code,
        )
    if original_diagnosis_date > today:
        raise RuleViolation(R1, "offline diagnosis date is in the future", date=original_diagnosis_date)
    earliest = add_months(today, -rules.follow_up_window_months)
    if original_diagnosis_date < earliest:
        raise RuleViolation(
            R1,
            f"offline diagnosis older than {rules.follow_up_window_months} months",
            original_diagnosis_date=original_diagnosis_date,
            earliest=earliest,
        )


def check_r2_physician(
    physician: Physician | None, physician_id: str, hospital_id: str, signature: str
) -> Physician:
    """R2: e-signature present; physician registered at this hospital and not suspended. Returns the physician."""
    if not signature.strip():
        raise RuleViolation(R2, "physician e-signature missing", physician_id=physician_id)
    if physician is None or physician.physician_id != physician_id:
        raise RuleViolation(R2, "physician not registered", physician_id=physician_id)
    if physician.hospital_id != hospital_id:
        raise RuleViolation(
            R2, "physician not registered at this hospital", physician_id=physician_id, hospital_id=hospital_id
        )
    if physician.suspended:
        raise RuleViolation(R2, "physician suspended", physician_id=physician_id)
    return physician


def check_r2_signature(
    physician: Physician, signature: str, content: bytes, **ids: Any
) -> None:
    """R2: the e-signature is the physician's Ed25519 signature over the prescription's canonical content
    (``services.domain.signature``), verified against the public key the authority registered for them."""
    if not physician.public_key:
        raise RuleViolation(R2, "no e-signature public key registered for the physician",
                            physician_id=physician.physician_id, **ids)
    if not verifies(physician.public_key, signature, content):
        raise RuleViolation(R2, "e-signature does not verify against the physician's registered key over the "
                                "prescription's content", physician_id=physician.physician_id, **ids)


def check_r3_approved(approved: bool, command: str, **ids: Any) -> None:
    """R3: nothing moves before a pharmacist approved the prescription."""
    if not approved:
        raise RuleViolation(R3, f"cannot {command} before pharmacist approval", **ids)


def r4_supply_limit(*, chronic_listed: bool, emergency_declared: bool, rules: RuleConfig) -> int:
    """R4: the days of supply a patient may hold of one generic drug: the ordinary limit, unless the diagnosis is a
    stable chronic disease on the region's list (8 weeks; 3 months while the authority declares an emergency)."""
    if not chronic_listed:
        return rules.ordinary_rx_max_days
    return rules.emergency_max_days if emergency_declared else rules.long_rx_max_days


def check_r4_long_prescription(
    items: Iterable[PrescriptionItem],
    *,
    diagnosis_code: str,
    chronic_listed: bool,
    emergency_declared: bool,
    rules: RuleConfig,
    **ids: Any,
) -> None:
    """R4: an item beyond the ordinary days of supply is a long prescription, only for a disease on the region's
    stable chronic disease list (registry, on the day), and at most the long (or declared-emergency) limit."""
    limit = r4_supply_limit(chronic_listed=chronic_listed, emergency_declared=emergency_declared, rules=rules)
    for item in items:
        if item.days_supply <= rules.ordinary_rx_max_days:
            continue
        if not chronic_listed:
            raise RuleViolation(
                R4,
                f"{item.days_supply} days' supply is a long prescription: {diagnosis_code} is not on the region's "
                f"stable chronic disease list (at most {rules.ordinary_rx_max_days} days)",
                drug_code=item.drug_code,
                diagnosis_code=diagnosis_code,
                **ids,
            )
        if item.days_supply > limit:
            raise RuleViolation(
                R4,
                f"{item.days_supply} days' supply exceeds {limit} days"
                + (" (emergency declared for the region)" if emergency_declared else ""),
                drug_code=item.drug_code,
                **ids,
            )


def check_r4_running_supply(*, running_days: int, days: int, limit: int, generic_code: str, **ids: Any) -> None:
    """R4: the days still running of the patient's prescriptions for the same generic drug, plus this one's, stay
    within the limit (one visit cannot issue three 56-day prescriptions of metformin)."""
    if running_days + days > limit:
        raise RuleViolation(
            R4,
            f"{days} days' supply on top of {running_days} days still running of the same generic drug exceeds "
            f"{limit} days",
            generic_code=generic_code,
            running_days=running_days,
            **ids,
        )


def flag_r5_beyond_first_visit(
    drug_codes: Collection[str], first_visit_drug_codes: Collection[str], justification: str | None
) -> RuleViolation | None:
    """R5: drugs added beyond the first-visit prescription without a recorded justification."""
    beyond = sorted(set(drug_codes) - set(first_visit_drug_codes))
    if not beyond or justification is not None:
        return None
    return RuleViolation(
        R5,
        "follow-up prescription adds drugs not on the first-visit prescription without justification",
        drug_codes=",".join(beyond),
    )


def check_r6_fee_disclosed(fee_disclosed: bool, **ids: Any) -> None:
    """R6: the delivery fee is stated to the patient before delivery is arranged."""
    if not fee_disclosed:
        raise RuleViolation(R6, "delivery fee must be stated to the patient in advance", **ids)


def check_r6_fee_self_pay(*, insured: Decimal, drugs_total: Decimal, delivery_fee: Decimal, **ids: Any) -> None:
    """R6: fund and personal account together pay no more than the drugs: the delivery fee is self-pay."""
    if insured > drugs_total:
        raise RuleViolation(R6, "delivery fee paid by the fund or personal account", **ids, delivery_fee=delivery_fee)


def _above_cap(line: DispensedLine) -> bool:
    """The line's price per unit exceeds the cap (a split sale: its share of the pack's cap, compared exactly)."""
    if line.price_cap is None:
        return False
    if line.split is None:
        return line.unit_price > line.price_cap
    return line.unit_price * line.split.pack_units > line.price_cap * line.split.units


def check_r7_not_above_cap(line: DispensedLine, **ids: Any) -> None:
    """R7: an internet hospital sells at most at its physical institution's price or the procurement price (the cap
    the registry holds for it on the day)."""
    if _above_cap(line):
        raise RuleViolation(
            R7,
            f"unit price {line.unit_price} above the price cap {line.price_cap} the registry holds for the "
            "institution on the day",
            drug_code=line.drug_code,
            unit_price=line.unit_price,
            price_cap=line.price_cap,
            **ids,
        )


def flag_r7_above_cap(lines: Iterable[DispensedLine]) -> list[RuleViolation]:
    """R7: a retail pharmacy's line above the registry's cap (the fund pays on min(actual, standard, cap))."""
    return [
        RuleViolation(
            R7,
            "unit price above the price cap; the fund pays at most on the payment standard or cap",
            drug_code=line.drug_code,
            unit_price=line.unit_price,
            price_cap=line.price_cap,
        )
        for line in lines
        if _above_cap(line)
    ]


def check_r7_within_caps(*, fund: Decimal, capped: Decimal, **ids: Any) -> None:
    """R7: the fund pays at most on min(actual, payment standard, cap) of each line, as the registry held them on the
    day of the dispense (the excess is the patient's: personal account or self-pay). The former rule that sent a
    non-public institution's excess to the personal account is a regional service-price rule (001 art. 8, 11), not
    a drug rule, so it no longer applies here."""
    if fund > capped:
        raise RuleViolation(R7, f"fund pays above the payment standards and price caps ({capped})", **ids)


def check_r8_scanned_once(codes: Iterable[str], **ids: Any) -> None:
    """R8: a code appears once in one dispense."""
    repeated = [code for code, n in Counter(codes).items() if n > 1]
    if repeated:
        raise RuleViolation(R8, "trace code scanned twice in one dispense", trace_code=repeated[0], **ids)


def check_r8_sold_once(
    existing: TraceCode | None, *, code: str, drug_code: str, prescription_id: object | None
) -> None:
    """R8: a code not sold yet (or returned to stock), and sold as the drug it belongs to."""
    if existing is None:
        return
    if existing.sold:
        raise RuleViolation(
            R8,
            "trace code already sold: suspected fraud",
            trace_code=code,
            sold_by=existing.seller_id,
            sold_for=existing.prescription_id,
            attempted_for=prescription_id,
        )
    if existing.drug_code != drug_code:
        raise RuleViolation(
            R8,
            "trace code belongs to another drug",
            trace_code=code,
            drug_code=existing.drug_code,
            scanned_as=drug_code,
        )


def check_r8_code_format(code: str, valid: bool) -> None:
    """R8: a drug traceability code is the 20-digit national code; anything else is refused, never ignored."""
    if not valid:
        raise RuleViolation(R8, "a drug traceability code is the 20-digit national code", trace_code=code[:40])


def check_r8_one_code_per_pack(line: DispensedLine, **ids: Any) -> None:
    """R8: every pack handed over is scanned: exactly one code per pack; a split-pack sale is one line of quantity 1
    with the opened pack's code. No code, fewer or more codes than packs are refused."""
    if line.split is not None:
        if line.quantity != 1 or len(line.trace_codes) != 1:
            raise RuleViolation(
                R8,
                "a split-pack sale is quantity 1 with exactly the opened pack's trace code",
                drug_code=line.drug_code, quantity=line.quantity, trace_codes=len(line.trace_codes), **ids,
            )
        return
    if len(line.trace_codes) != line.quantity:
        raise RuleViolation(
            R8,
            f"{line.quantity} packs need {line.quantity} trace codes, one per pack; {len(line.trace_codes)} scanned",
            drug_code=line.drug_code, quantity=line.quantity, trace_codes=len(line.trace_codes), **ids,
        )


def check_r8_pack_units(
    *, opened_units: int | None, units_sold: int, units: int | None, pack_units: int | None, trace_code: str
) -> None:
    """R8 for split packs: an opened pack is only sold on by units, of the same pack size, never beyond what it
    holds; a pack opened for split sales is never sold again as a whole pack."""
    if opened_units is None:
        return
    if units is None or pack_units is None:
        raise RuleViolation(R8, "pack already opened for split-pack sales: it cannot be sold as a whole pack",
                            trace_code=trace_code, units_sold=units_sold)
    if pack_units != opened_units:
        raise RuleViolation(R8, f"pack holds {opened_units} units, not {pack_units}", trace_code=trace_code)
    if units_sold + units > pack_units:
        raise RuleViolation(
            R8, f"{units} more units would exceed the pack's {pack_units} ({units_sold} already sold)",
            trace_code=trace_code, units_sold=units_sold,
        )


def check_r17_pharmacy_lists(drug_codes: Collection[str] | None, drug_code: str, pharmacy_id: str) -> None:
    """R17: where the registry holds the pharmacy's drug list, the pharmacy dispenses only drugs on it."""
    if drug_codes is not None and drug_code not in drug_codes:
        raise RuleViolation(R17, "drug not on the pharmacy's registered drug list", drug_code=drug_code,
                            pharmacy_id=pharmacy_id)


def check_r17_patient_choice(preferred: str, target: str, preferred_can_take: bool, **ids: Any) -> None:
    """R17: the patient's recorded choice of pharmacy is honoured; the prescription goes elsewhere only once the
    chosen pharmacy cannot take it (it returned it, its agreement is suspended, or it left the region)."""
    if preferred_can_take:
        raise RuleViolation(R17, f"the patient chose pharmacy {preferred}; routing to {target} is refused",
                            preferred_pharmacy_id=preferred, pharmacy_id=target, **ids)


def check_r9_same_person(expected_ref: str, settling_ref: str, **ids: Any) -> None:
    """R9: the person served is the person settling."""
    if settling_ref != expected_ref:
        raise RuleViolation(R9, "the person settling is not the person served", **ids)


def check_r10_consent(needs_consent: bool, patient_consent: bool, reason: str, **ids: Any) -> None:
    """R10: a drug outside the catalog or its indication is self-pay, with the patient's consent recorded."""
    if needs_consent and not patient_consent:
        raise RuleViolation(R10, reason, **ids)


def check_r10_self_pay_lines(*, insured: Decimal, insurable_total: Decimal, **ids: Any) -> None:
    """R10: fund and personal account pay nothing of the self-pay-only lines."""
    if insured > insurable_total:
        raise RuleViolation(R10, "out-of-catalog or out-of-indication drugs must be self-pay", **ids)


def check_r11_not_suspended(
    patient: PatientStatus | None,
    patient_ref: str,
    fund: Decimal,
    personal_account: Decimal,
    clock: Clock,
    rules: RuleConfig,
) -> None:
    """R11: a patient suspended for fraud gets no insurance payment online."""
    if patient is None:
        return
    if patient.patient_ref != patient_ref:
        raise InvalidCommand("patient status given is for another patient", patient_ref=patient.patient_ref)
    if patient.is_suspended(clock.now(), rules) and (fund != ZERO or personal_account != ZERO):
        raise RuleViolation(
            R11, "patient suspended for fraud: no fund or personal-account payment", patient_ref=patient_ref
        )


def check_r12_policy_region(
    business_type: BusinessType, insured_region: str, treatment_region: str, policy_region: str
) -> None:
    """R12: off-site patients settle by their insured region's policy; local ones by the local policy."""
    expected = insured_region if business_type is BusinessType.OFF_SITE else treatment_region
    if policy_region != expected:
        raise RuleViolation(
            R12,
            f"{business_type.value} settlement must use region {expected}'s policy",
            policy_region=policy_region,
            expected=expected,
        )


def check_r12_insured_region_policy(policy_region: str, insured_region: str) -> None:
    """R12 (settlement calculator): the policy applied is the insured region's."""
    if policy_region != insured_region:
        raise RuleViolation(
            R12, "settle by the insured region's policy", policy_region=policy_region, insured_region=insured_region
        )


def check_r12_catalog_region(catalog_region: str, treatment_region: str, **ids: Any) -> None:
    """R12: the drug catalog is the treatment region's."""
    if catalog_region != treatment_region:
        raise RuleViolation(
            R12,
            f"catalog must be the treatment region's ({treatment_region})",
            catalog_region=catalog_region,
            treatment_region=treatment_region,
            **ids,
        )


def check_r13_on_prescription(drug_code: str, prescribed: Mapping[str, int], **ids: Any) -> None:
    """R13: only drugs on the prescription are dispensed."""
    if drug_code not in prescribed:
        raise RuleViolation(R13, "drug not on the prescription", **ids, drug_code=drug_code)


def check_r13_within_prescribed(
    dispensing: Mapping[str, int], already: Mapping[str, int], prescribed: Mapping[str, int], **ids: Any
) -> None:
    """R13: what was dispensed before plus this dispense stays within the prescribed quantity, per drug."""
    for code, qty in dispensing.items():
        if already.get(code, 0) + qty > prescribed[code]:
            raise RuleViolation(
                R13,
                f"dispensing {qty} would exceed the prescribed {prescribed[code]} "
                f"({already.get(code, 0)} already dispensed)",
                **ids,
                drug_code=code,
            )


def check_r13_not_dispensed_in_full(already: Mapping[str, int], prescribed: Mapping[str, int], **ids: Any) -> None:
    """R13: a prescription dispensed in full is not dispensed again."""
    if all(already.get(code, 0) >= qty for code, qty in prescribed.items()):
        raise RuleViolation(R13, "prescription already dispensed in full", **ids)


def check_r14_offline_sale(business_type: BusinessType, prescription_id: object | None, **ids: Any) -> None:
    """R14: an offline sale is never tied to an online prescription."""
    if business_type is BusinessType.OFFLINE and prescription_id is not None:
        raise RuleViolation(
            R14, "offline sale recorded against an online prescription", **ids, prescription_id=prescription_id
        )


def check_r15_consultation_price(charged: Decimal, standard: Decimal | None, ownership: Ownership, **ids: Any) -> None:
    """R15: a public institution may not charge above the treatment region's ordinary outpatient consultation price
    for its level (``standard``: the region policy's price; None when the region publishes none)."""
    if standard is not None and ownership is Ownership.PUBLIC and charged > standard:
        raise RuleViolation(R15, f"consultation fee {charged} above the region's outpatient consultation price "
                                 f"{standard} (public institution)", consultation_fee=charged, standard=standard, **ids)


def check_r16_diagnosed_offline(
    original: Institution | None, original_institution_id: str, hospital_id: str
) -> None:
    """R16: the diagnosis a follow-up continues was made at a registered physical institution, not at the internet
    hospital itself (nor at another internet hospital)."""
    if original_institution_id == hospital_id:
        raise RuleViolation(R16, "the original diagnosis was made at the internet hospital itself, not offline",
                            original_institution_id=original_institution_id)
    if original is None:
        raise RuleViolation(R16, "the institution of the original diagnosis is not a registered institution",
                            original_institution_id=original_institution_id)
    if str(original.kind) != "physical":
        raise RuleViolation(R16, "the original diagnosis was made at an internet hospital, not at a physical "
                                 "institution", original_institution_id=original_institution_id)


def check_r17_registered(fact: _Fact | None, what: str, **ids: Any) -> _Fact:
    """R17: a fact that decides eligibility or money must be in the authority's registry; none is taken on trust.
    Returns the fact."""
    if fact is None:
        raise RuleViolation(R17, f"{what} not in the authority's registry", **ids)
    return fact


def check_r17_request_agrees(field: str, declared: object | None, registered: object, **ids: Any) -> None:
    """R17: a request may repeat a registry fact, never contradict it (the registry's value is the one recorded)."""
    if declared is not None and str(declared) != str(registered):
        raise RuleViolation(R17, f"{field} {declared} disagrees with the authority's registry ({registered})",
                            field=field, declared=declared, registered=registered, **ids)


def check_r17_institution_active(
    hospital: Institution | None, physical: Institution | None, hospital_id: str, day: date
) -> tuple[Institution, Institution]:
    """R17: the internet hospital is registered as one, and both it and its physical institution hold an active
    agreement (suspending the physical institution suspends its internet hospitals). Returns both."""
    if hospital is None:
        raise RuleViolation(R17, "the hospital is not a registered institution", hospital_id=hospital_id)
    if str(hospital.kind) != "internet":
        raise RuleViolation(R17, "the hospital is not registered as an internet hospital", hospital_id=hospital_id)
    if physical is None or physical.institution_id != hospital.physical_institution_id:
        raise RuleViolation(R17, "the internet hospital's physical institution is not registered",
                            hospital_id=hospital_id, physical_institution_id=hospital.physical_institution_id)
    if not hospital.agreement_active_on(day):
        raise RuleViolation(R17, "the internet hospital's agreement is not active", hospital_id=hospital_id)
    if not physical.agreement_active_on(day):
        raise RuleViolation(R17, "the physical institution's agreement is not active (its internet hospital is "
                                 "suspended with it)", hospital_id=hospital_id,
                            physical_institution_id=hospital.physical_institution_id)
    return hospital, physical


def check_r18_may_review(pharmacist: Pharmacist, hospital_id: str, physical_institution_id: str) -> None:
    """R18: an employed pharmacist reviews only for its employer (the internet hospital or its physical
    institution); a third-party pharmacist only for hospitals it has a recorded cooperation agreement with."""
    institutions = {hospital_id, physical_institution_id}
    if pharmacist.suspended:
        raise RuleViolation(R18, "pharmacist suspended", pharmacist_id=pharmacist.pharmacist_id)
    if pharmacist.third_party:
        if not institutions & set(pharmacist.agreements):
            raise RuleViolation(R18, "third-party pharmacist without a cooperation agreement with the hospital",
                                pharmacist_id=pharmacist.pharmacist_id, hospital_id=hospital_id)
    elif pharmacist.employer_id not in institutions:
        raise RuleViolation(R18, "pharmacist employed by another institution", pharmacist_id=pharmacist.pharmacist_id,
                            hospital_id=hospital_id, employer_id=pharmacist.employer_id)


def check_r19_extension(
    *, issued_at: datetime, valid_until: datetime, requested: datetime, physician_id: str, prescriber_id: str,
    rules: RuleConfig, **ids: Any,
) -> None:
    """R19: only the prescribing physician extends a prescription's validity, to at most validity_days after issue."""
    if physician_id != prescriber_id:
        raise RuleViolation(R19, "only the prescribing physician extends the validity", physician_id=physician_id,
                            **ids)
    latest = issued_at + timedelta(days=rules.validity_days)
    if requested > latest:
        raise RuleViolation(R19, f"validity extends to at most {rules.validity_days} days after issue",
                            requested=requested.isoformat(), latest=latest.isoformat(), **ids)
    if requested <= valid_until:
        raise InvalidCommand("an extension must end after the current validity", valid_until=valid_until.isoformat(),
                             **ids)


def check_r19_valid(now: datetime, valid_until: datetime, prescription_id: object) -> None:
    """R19: the prescription is still within its validity."""
    if now > valid_until:
        raise ValidityElapsed(R19, prescription_id, valid_until.isoformat())
