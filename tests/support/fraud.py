"""Planted misbehaviour (and honest traffic next to it) for the fraud projection's tests, as hash-chained events built
from the public contracts (``services.simulate.Chain``), with what each pattern must and must not find."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from events import registries
from events.base import BusinessType, CatalogCategory, DomainEvent, InsuranceType, Ownership
from events.prescription import (
    DeliveryArranged,
    DispensedLine,
    DispenseWithdrawn,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionItem,
    RuleFlagged,
)
from events.registries import (
    PharmacyAgreementSuspended,
    PharmacyDesignated,
    PhysicianRegistered,
    PhysicianReinstated,
    PhysicianSuspended,
)
from events.trace_code import TraceCodeSold
from services.simulate import REGION, Chain

BT = BusinessType.INTERNET
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 China time


def _registry(cls: type[Any], chain: Chain, at: datetime, **fields: Any) -> Any:
    """A registry event with the fields registry events carry (who changed it, from when) where its class has them."""
    extra = {"changed_by": "agency:370100", "effective_from": at.date()}
    return chain.add(cls, at, **{k: v for k, v in extra.items() if k in cls.model_fields}, **fields)


DrugListed: Any = getattr(registries, "DrugListed", None)
"""The drug registry's listing (with its generic), where the registry has one."""


@dataclass
class Planted:
    events: list[DomainEvent] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    expect: dict[str, Any] = field(default_factory=dict)

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def patient(self, name: str) -> str:
        return f"{self.tag}{name}".ljust(16, "0")

    def issue(self, at: datetime, *, physician: str, hospital: str, patient: str,
              items: tuple[tuple[str, int, int], ...] = (("XA10BAA001A001030101", 1, 7),)) -> Chain:
        rx = Chain()
        self.events.append(rx.add(
            PrescriptionIssued, at, business_type=BT, encounter_id=uuid.uuid4(), hospital_id=hospital,
            physical_institution_id=f"P-{hospital}", institution_ownership=Ownership.PUBLIC, pooling_region=REGION,
            insured_region=REGION, insurance_type=InsuranceType.EMPLOYEE, patient_ref=patient,
            physician_id=physician, physician_signature="sig", diagnosis_code="E11", diagnosis_name="diabetes",
            items=tuple(PrescriptionItem(drug_code=d, name="drug", spec="spec", quantity=q, days_supply=days,
                                         unit_price=Decimal("10.00"), category=CatalogCategory.A)
                        for d, q, days in items),
            valid_until=at + timedelta(days=3)))
        return rx

    def dispense(self, rx: Chain, at: datetime, *, dispenser: str,
                 lines: tuple[tuple[str, int, str, str | None], ...] = (("XA10BAA001A001030101", 1, "10.00", "10.00"),),
                 no: int = 1) -> None:
        self.events.append(rx.add(
            PrescriptionDispensed, at, business_type=BT, dispenser_id=dispenser, dispense_no=no, complete=True,
            lines=tuple(DispensedLine(drug_code=d, quantity=q, unit_price=Decimal(p),
                                      price_cap=None if cap is None else Decimal(cap)) for d, q, p, cap in lines)))


DRUG_X = "XA10BAA001A001030101"
DRUG_Y = "XA10BAA001A002030101"  # another maker's metformin: same generic as DRUG_X
DRUG_Z = "XC09AAB001A001010101"


def plant(base: datetime = T0) -> Planted:
    p = Planted()
    day = timedelta(days=1)
    h1, h2 = p.id("H1"), p.id("H2")

    # drug listings: X and Y are the same generic (without a drug registry, a drug code is its own generic)
    second, generic = DRUG_X, DRUG_X
    if DrugListed is not None:
        for drug, listed in ((DRUG_X, "G-METFORMIN"), (DRUG_Y, "G-METFORMIN"), (DRUG_Z, "G-ENALAPRIL")):
            p.events.append(_registry(DrugListed, Chain(), base - 30 * day, drug_code=drug, generic_code=listed,
                                      name="drug", category=CatalogCategory.A))
        second, generic = DRUG_Y, "G-METFORMIN"

    # doctor shopping: X from DOC1 at H1 (30 days), 5 days later Y (same generic) from DOC2 at H2 (30 days)
    shopper = p.patient("shop")
    a = p.issue(base, physician=p.id("DOC1"), hospital=h1, patient=shopper, items=((DRUG_X, 2, 30),))
    p.dispense(a, base + timedelta(hours=2), dispenser=p.id("PHA"), lines=((DRUG_X, 2, "10.00", "12.00"),))
    b = p.issue(base + 5 * day, physician=p.id("DOC2"), hospital=h2, patient=shopper, items=((second, 2, 30),))
    p.dispense(b, base + 5 * day + timedelta(hours=2), dispenser=p.id("PHB"), lines=((second, 2, "10.00", "12.00"),))
    p.expect["shopper"] = (shopper, {a.id, b.id}, generic)

    # honest: the same physician renews before the supply ends; another physician takes over after it ran out
    honest = p.patient("honest")
    for start, doc in ((0, "DOC1"), (28, "DOC1"), (59, "DOC2")):
        rx = p.issue(base + start * day, physician=p.id(doc), hospital=h1 if doc == "DOC1" else h2, patient=honest,
                     items=((DRUG_X, 1, 30),))
        p.dispense(rx, base + start * day + timedelta(hours=1), dispenser=p.id("PHA"),
                   lines=((DRUG_X, 1, "10.00", "12.00"),))
    p.expect["honest"] = honest

    # a second physician's overlapping supply that was withdrawn (the packs went back): not doctor shopping
    withdrawn = p.patient("wd")
    first_rx = p.issue(base, physician=p.id("DOC1"), hospital=h1, patient=withdrawn, items=((DRUG_X, 1, 30),))
    p.dispense(first_rx, base + timedelta(hours=1), dispenser=p.id("PHA"), lines=((DRUG_X, 1, "10.00", "12.00"),))
    back = p.issue(base + 5 * day, physician=p.id("DOC2"), hospital=h2, patient=withdrawn, items=((DRUG_X, 1, 30),))
    p.dispense(back, base + 5 * day + timedelta(hours=1), dispenser=p.id("PHB"),
               lines=((DRUG_X, 1, "10.00", "12.00"),))
    p.events.append(back.add(DispenseWithdrawn, base + 5 * day + timedelta(hours=2), business_type=BT, dispense_no=1,
                             reason="wrong patient"))
    p.expect["withdrawn"] = withdrawn

    # a trace code sold once, then tried again twice on another prescription (refused R8, flagged)
    code = f"9{int(p.tag, 16):019d}"
    first = p.issue(base, physician=p.id("DOC1"), hospital=h1, patient=p.patient("tc1"))
    p.events.append(Chain().add(TraceCodeSold, base + timedelta(hours=1), business_type=BT, code=code,
                                drug_code=DRUG_X, seller_id=p.id("PHA"), prescription_id=first.id,
                                patient_ref=p.patient("tc1")))
    again = p.issue(base + day, physician=p.id("DOC3"), hospital=h2, patient=p.patient("tc2"))
    for hours in (1, 2):
        p.events.append(again.add(RuleFlagged, base + day + timedelta(hours=hours), business_type=BT, rule_id="R8",
                                  reason="trace code already sold: suspected fraud",
                                  details={"trace_code": code, "sold_for": str(first.id),
                                           "attempted_for": str(again.id)}))
    p.expect["code"] = (code, first.id, again.id)

    # a code sold twice with no return in between
    dup = code[:-1] + ("1" if code[-1] != "1" else "2")
    for i in range(2):
        p.events.append(Chain().add(TraceCodeSold, base + timedelta(hours=3 + i), business_type=BT, code=dup,
                                    drug_code=DRUG_X, seller_id=p.id(f"PH-DUP{i}")))
    p.expect["dup"] = dup

    # a physician suspended on day 3 who issues on day 1 (fine) and day 4 (not)
    suspended = p.id("DOC-S")
    reg = Chain()
    p.events.append(_registry(PhysicianRegistered, reg, base - 10 * day, physician_id=suspended, hospital_id=h1,
                              name="Dr S", qualification_no="Q-1"))
    p.events.append(_registry(PhysicianSuspended, reg, base + 3 * day, reason="licence revoked"))
    before = p.issue(base + day, physician=suspended, hospital=h1, patient=p.patient("s1"))
    after = p.issue(base + 4 * day, physician=suspended, hospital=h1, patient=p.patient("s2"))
    p.expect["suspended"] = (suspended, before.id, after.id, reg.id)

    # a physician suspended on day 2 and reinstated on day 5: only the day-3 prescription is found
    paused = p.id("DOC-P")
    reg = Chain()
    p.events.append(_registry(PhysicianRegistered, reg, base - 10 * day, physician_id=paused, hospital_id=h1,
                              name="Dr P", qualification_no="Q-2"))
    p.events.append(_registry(PhysicianSuspended, reg, base + 2 * day, reason="under review"))
    p.events.append(_registry(PhysicianReinstated, reg, base + 5 * day, reason="cleared"))
    during = p.issue(base + 3 * day, physician=paused, hospital=h1, patient=p.patient("p1"))
    later = p.issue(base + 6 * day, physician=paused, hospital=h1, patient=p.patient("p2"))
    p.expect["paused"] = (paused, during.id, later.id)

    # a pharmacy whose agreement is suspended on day 2 and which still dispenses on day 3
    shut = p.id("PH-S")
    reg = Chain()
    p.events.append(_registry(PharmacyDesignated, reg, base - 10 * day, pharmacy_id=shut, name="Pharmacy S",
                              pooling_region=REGION, agreement_no="A-1"))
    p.events.append(_registry(PharmacyAgreementSuspended, reg, base + 2 * day, reason="agreement suspended"))
    rx = p.issue(base + 3 * day, physician=p.id("DOC1"), hospital=h1, patient=p.patient("ps1"))
    p.dispense(rx, base + 3 * day + timedelta(hours=1), dispenser=shut)
    p.expect["pharmacy_suspended"] = (shut, rx.id)

    # R5: 3 of 5 prescriptions of one physician flagged
    r5 = p.id("DOC-R5")
    for i in range(5):
        rx = p.issue(base + i * day, physician=r5, hospital=h1, patient=p.patient(f"r5{i}"))
        if i < 3:
            p.events.append(rx.add(RuleFlagged, base + i * day + timedelta(minutes=1), business_type=BT, rule_id="R5",
                                   reason="adds drugs", details={"drug_codes": DRUG_Z}))
    p.expect["r5"] = r5

    # prices: one pharmacy prices 21 lines of 3 drugs at the cap; another sells 2 of 5 above it
    cap = p.id("PH-CAP")
    for i in range(7):
        rx = p.issue(base + i * day, physician=p.id("DOC4"), hospital=h1, patient=p.patient(f"cap{i}"),
                     items=((DRUG_X, 1, 7), (DRUG_Y, 1, 7), (DRUG_Z, 1, 7)))
        p.dispense(rx, base + i * day + timedelta(hours=1), dispenser=cap,
                   lines=((DRUG_X, 1, "12.00", "12.00"), (DRUG_Y, 1, "9.50", "9.50"), (DRUG_Z, 1, "30.00", "30.00")))
    above = p.id("PH-R7")
    for i in range(5):
        rx = p.issue(base + i * day, physician=p.id("DOC4"), hospital=h1, patient=p.patient(f"r7{i}"))
        p.dispense(rx, base + i * day + timedelta(hours=1), dispenser=above,
                   lines=((DRUG_X, 1, "13.00" if i < 2 else "11.00", "12.00"),))
    p.expect["prices"] = (cap, above)

    # volume: a physician with one or two prescriptions a day for 14 days, then 15 on one day
    vol = p.id("DOC-VOL")
    for i in range(14):
        for j in range(1 + i % 2):
            p.issue(base + i * day + timedelta(minutes=j), physician=vol, hospital=h2, patient=p.patient(f"v{i}{j}"))
    for j in range(15):
        p.issue(base + 14 * day + timedelta(minutes=j), physician=vol, hospital=h2, patient=p.patient(f"vx{j}"))
    p.expect["volume"] = (vol, (base + 14 * day + timedelta(hours=8)).date())

    # deliveries: five patients to one address, two to another
    for address, n in (("ad" + p.tag.ljust(14, "0"), 5), ("ae" + p.tag.ljust(14, "0"), 2)):
        for i in range(n):
            rx = p.issue(base + i * day, physician=p.id("DOC5"), hospital=h1, patient=p.patient(f"{address[:2]}{i}"))
            p.dispense(rx, base + i * day + timedelta(hours=1), dispenser=p.id("PHA"))
            p.events.append(rx.add(DeliveryArranged, base + i * day + timedelta(hours=2), business_type=BT,
                                   delivery_enterprise_id="DE-1", delivery_fee=Decimal("5.00"), address_ref=address))
    p.expect["address"] = ("ad" + p.tag.ljust(14, "0"), "ae" + p.tag.ljust(14, "0"))
    p.events.sort(key=lambda e: e.timestamp)
    return p
