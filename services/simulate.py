"""Realistic traffic for tests, benchmarks and demos, built from the public contracts only (``events/``).

- ``make_trails``: whole hash-chained trails of events (visit, prescription, review, routing, partial dispenses with
  trace codes, delivery or collection, settlement, audit), as the write side would store them, plus
  ``relay_headers`` to publish them the way the relay does;
- ``visit_body`` / ``prescription_body`` / ``dispense_body``: JSON bodies of the parties' HTTP requests.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from eventsourcing.utils import get_topic

from events import GENESIS_HASH, event_hash, to_json
from events.base import BusinessType, CatalogCategory, DomainEvent, InsuranceType, Ownership, RealNameMethod
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.envelope import record_headers
from events.prescription import (
    DeliveryArranged,
    DispensedLine,
    DispenserKind,
    FeesClawedBack,
    FeesRefusedInAudit,
    PrescriptionAccepted,
    PrescriptionApproved,
    PrescriptionCollected,
    PrescriptionDelivered,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionItem,
    PrescriptionRouted,
    PrescriptionSettled,
    RoutingBasis,
)
from events.trace_code import TraceCodeSold
from services.domain.rules import R2, R4, R7, R8, R16

E = TypeVar("E", bound=DomainEvent)

# The application (event log) that stores each event type; the rest are prescriptions'.
APPLICATION_OF = {"FollowUpVisitRecorded": "encounters", "ConsultationSettled": "encounters",
                  "TraceCodeSold": "tracecodes", "TraceCodeReturned": "tracecodes"}

REGION = "370100"
CENT = Decimal("0.01")


def money(x: Decimal) -> Decimal:
    return x.quantize(CENT)


class Chain:
    """Builds one aggregate's events: versions counted, each event's prev_hash the previous event's hash."""

    def __init__(self, aggregate_id: uuid.UUID | None = None) -> None:
        self.id = aggregate_id or uuid.uuid4()
        self.version = 0
        self.head = GENESIS_HASH

    def add(self, cls: type[E], at: datetime, **fields: Any) -> E:
        self.version += 1
        e = cls(originator_id=self.id, originator_version=self.version, timestamp=at, prev_hash=self.head, **fields)
        e = e.model_copy(update={"hash": event_hash(e)})
        self.head = e.hash
        return e


@dataclass
class Trail:
    encounter_id: uuid.UUID
    prescription_id: uuid.UUID
    hospital_id: str
    institution_id: str
    pharmacy_id: str | None
    delivery_enterprise_id: str | None
    patient_ref: str
    physician_id: str
    events: list[DomainEvent] = field(default_factory=list)
    times: dict[str, datetime] = field(default_factory=dict)
    trace_codes: list[str] = field(default_factory=list)
    settled: PrescriptionSettled | None = None
    consultation: ConsultationSettled | None = None
    refused: Decimal = Decimal("0.00")
    clawed_back: Decimal = Decimal("0.00")


def make_trail(rng: random.Random, start: datetime, *, hospital_id: str, institution_id: str,
               pharmacy_id: str | None, delivery_enterprise_id: str | None = None, patient_ref: str | None = None,
               physician_id: str = "PHY-1", audit: bool = True) -> Trail:
    """A whole trail: visit, prescription, review, routing, two partial dispenses with trace codes, delivery (or
    collection at the hospital), settlement, refusal in audit, clawback, and the consultation's settlement."""
    enc, rx = Chain(), Chain()
    patient = patient_ref or f"pt-{uuid.uuid4().hex[:16]}"
    t = Trail(enc.id, rx.id, hospital_id, institution_id, pharmacy_id, delivery_enterprise_id if pharmacy_id else None,
              patient, physician_id)
    bt = BusinessType.INTERNET
    fee = Decimal(rng.choice(["12.00", "18.50", "25.00"]))
    at = start
    t.times["visit"] = at
    t.events.append(enc.add(
        FollowUpVisitRecorded, at, business_type=bt, hospital_id=hospital_id, physical_institution_id=institution_id,
        institution_ownership=Ownership.PUBLIC, pooling_region=REGION, insured_region=REGION,
        insurance_type=InsuranceType.EMPLOYEE, patient_ref=patient, patient_sealed="v1.k1.c2VhbGVkLXNlY3JldA",
        physician_id=physician_id, physician_signature="sig-visit", diagnosis_code="I10",
        diagnosis_name="hypertension", original_diagnosis_code="I10", original_diagnosis_date=date(2025, 11, 2),
        original_institution_id=institution_id, verification_method=RealNameMethod.E_VOUCHER, consultation_fee=fee))
    price_a = money(Decimal(rng.randint(1500, 9000)) / 100)
    price_b = money(Decimal(rng.randint(500, 4000)) / 100)
    drug_a, drug_b = "X" + "A" * 19, "Z" + "B" * 19
    at += timedelta(minutes=5)
    t.times["issued"] = at
    t.events.append(rx.add(
        PrescriptionIssued, at, business_type=bt, encounter_id=enc.id, hospital_id=hospital_id,
        physical_institution_id=institution_id, institution_ownership=Ownership.PUBLIC, pooling_region=REGION,
        insured_region=REGION, insurance_type=InsuranceType.EMPLOYEE, patient_ref=patient,
        patient_sealed="v1.k1.c2VhbGVkLXNlY3JldA", physician_id=physician_id, physician_signature="sig-rx",
        diagnosis_code="I10", diagnosis_name="hypertension",
        items=(PrescriptionItem(drug_code=drug_a, name="amlodipine", spec="5mg*28", quantity=2, days_supply=56,
                                unit_price=price_a, category=CatalogCategory.A),
               PrescriptionItem(drug_code=drug_b, name="aspirin", spec="100mg*30", quantity=2, days_supply=56,
                                unit_price=price_b, category=CatalogCategory.B)),
        valid_until=at + timedelta(days=3)))
    consult_fund = money(fee * Decimal("0.6"))
    at += timedelta(minutes=5)
    t.consultation = enc.add(
        ConsultationSettled, at, business_type=bt, settled_with=institution_id, patient_ref=patient,
        verification_method=RealNameMethod.E_VOUCHER, fund=consult_fund, personal_account=Decimal("0.00"),
        self_pay=fee - consult_fund, policy_version="p1", settlement_ref=f"cs-{enc.id.hex[:8]}")
    t.events.append(t.consultation)
    at += timedelta(minutes=10)
    t.times["approved"] = at
    t.events.append(rx.add(PrescriptionApproved, at, business_type=bt, pharmacist_id="PHA-1"))
    at += timedelta(minutes=30)
    t.times["routed"] = at
    kind = DispenserKind.PHARMACY if pharmacy_id else DispenserKind.HOSPITAL
    dispenser = pharmacy_id or hospital_id
    t.events.append(rx.add(PrescriptionRouted, at, business_type=bt, dispenser_kind=kind, dispenser_id=dispenser,
                           dispenser_ownership=Ownership.NON_PUBLIC if pharmacy_id else Ownership.PUBLIC,
                           basis=RoutingBasis.PATIENT_CHOICE))
    at += timedelta(minutes=15)
    t.events.append(rx.add(PrescriptionAccepted, at, business_type=bt, dispenser_id=dispenser))
    codes = ["".join(rng.choice("0123456789") for _ in range(20)) for _ in range(4)]
    t.trace_codes = codes
    at += timedelta(hours=1)
    t.times["dispensed"] = at
    first = (DispensedLine(drug_code=drug_a, quantity=1, unit_price=price_a, price_cap=price_a,
                           trace_codes=(codes[0],)),)
    t.events.append(rx.add(PrescriptionDispensed, at, business_type=bt, dispenser_id=dispenser, dispense_no=1,
                           lines=first, complete=False))
    sales = [(codes[0], drug_a, at)]
    at += timedelta(hours=1)
    second = (DispensedLine(drug_code=drug_a, quantity=1, unit_price=price_a, price_cap=price_a,
                            trace_codes=(codes[1],)),
              DispensedLine(drug_code=drug_b, quantity=2, unit_price=price_b, price_cap=price_b,
                            trace_codes=(codes[2], codes[3])))
    t.events.append(rx.add(PrescriptionDispensed, at, business_type=bt, dispenser_id=dispenser, dispense_no=2,
                           lines=second, complete=True))
    sales += [(codes[1], drug_a, at), (codes[2], drug_b, at), (codes[3], drug_b, at)]
    for code, drug, sold_at in sales:
        t.events.append(Chain().add(TraceCodeSold, sold_at, business_type=bt, code=code, drug_code=drug,
                                    seller_id=dispenser, prescription_id=rx.id, patient_ref=patient))
    drugs = price_a * 2 + price_b * 2
    delivery = Decimal("0.00")
    if pharmacy_id:
        delivery = Decimal(rng.choice(["0.00", "6.00", "8.00"]))
        at += timedelta(minutes=10)
        t.events.append(rx.add(DeliveryArranged, at, business_type=bt,
                               delivery_enterprise_id=delivery_enterprise_id or "DEL-1", delivery_fee=delivery))
        at += timedelta(hours=3)
        t.events.append(rx.add(PrescriptionDelivered, at, business_type=bt,
                               delivery_enterprise_id=delivery_enterprise_id or "DEL-1"))
    else:
        at += timedelta(hours=1)
        t.events.append(rx.add(PrescriptionCollected, at, business_type=bt,
                               verification_method=RealNameMethod.FACE_RECOGNITION))
    fund = money(drugs * Decimal("0.7"))
    personal = money(drugs * Decimal("0.1"))
    at += timedelta(minutes=5)
    t.times["settled"] = at
    t.settled = rx.add(
        PrescriptionSettled, at, business_type=bt, settled_with=pharmacy_id or institution_id,
        settled_with_kind=kind, patient_ref=patient, verification_method=RealNameMethod.E_VOUCHER,
        total=drugs + delivery, fund=fund, personal_account=personal, self_pay=drugs - fund - personal + delivery,
        delivery_fee=delivery, policy_version="p1", policy_region=REGION, catalog_region=REGION,
        settlement_ref=f"st-{rx.id.hex[:8]}")
    t.events.append(t.settled)
    if audit:
        t.refused = money(fund * Decimal("0.1"))
        t.clawed_back = money(fund * Decimal("0.05"))
        t.times["refused"] = at + timedelta(days=20)
        t.events.append(rx.add(FeesRefusedInAudit, t.times["refused"], business_type=bt, amount=t.refused,
                               reason="over-supply", audit_ref=f"au-{rx.id.hex[:6]}"))
        t.times["clawed_back"] = at + timedelta(days=40)
        t.events.append(rx.add(FeesClawedBack, t.times["clawed_back"], business_type=bt, amount=t.clawed_back,
                               reason="violation found", audit_ref=f"cb-{rx.id.hex[:6]}"))
    return t


def make_trails(n: int, *, seed: int = 7, start: datetime | None = None, jinan: bool = False) -> list[Trail]:
    """``n`` trails over two hospitals of one institution plus one of another, three pharmacies, hospital
    dispensing every fourth, spread over about six weeks so months (and a CST month boundary) are crossed."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    hospitals = [(f"H1-{tag}", f"INST1-{tag}"), (f"H2-{tag}", f"INST1-{tag}"), (f"H3-{tag}", f"INST2-{tag}")]
    pharmacies = [f"PH{i}-{tag}" for i in range(3)]
    delivery = [f"DEL{i}-{tag}" for i in range(2)]
    patients = [f"pt-{tag}-{i:03d}" for i in range(max(1, n // 3))]
    base = start or datetime(2026, 1, 27, 8, 0, tzinfo=UTC)
    trails = []
    for i in range(n):
        hospital, institution = hospitals[i % 3]
        at = base + timedelta(hours=7 * i + rng.randint(0, 5))
        trails.append(make_trail(rng, at, hospital_id=hospital, institution_id=institution,
                                 pharmacy_id=None if i % 4 == 3 else pharmacies[i % 3],
                                 delivery_enterprise_id=delivery[i % 2], patient_ref=patients[i % len(patients)],
                                 physician_id=f"PHY{i % 4}-{tag}", audit=i % 3 != 2))
    return trails


def all_events(trails: Iterable[Trail]) -> list[DomainEvent]:
    """Every event of the trails in time order (stable: per-aggregate order is kept)."""
    return sorted((e for t in trails for e in t.events), key=lambda e: e.timestamp)


def relay_headers(e: DomainEvent, notification_id: int) -> list[tuple[str, bytes]]:
    """The headers the relay puts on the message of a stored event (``events.envelope.record_headers``)."""
    return record_headers(notification_id, str(e.originator_id), e.originator_version, get_topic(type(e)), to_json(e),
                          APPLICATION_OF.get(type(e).__name__, "prescriptions"))


# --- HTTP request bodies of the parties -------------------------------------------------------------------------

CATALOG_METFORMIN = "XA10BAA001A001030101"  # in the reference catalog (category A, cap 11.25)


def visit_body(hospital_id: str, physician_id: str, region: str, *, visit_ref: str | None = None,
               national_id: str | None = None, original_diagnosis_date: date | None = None,
               original_institution_id: str = "OFFLINE-1", consultation_fee: str = "20.00",
               registry_facts: bool = True) -> dict[str, Any]:
    """``POST /hospital/visits``: a follow-up visit of an insured patient of ``region``. ``registry_facts=False``
    leaves out what the platform reads from the registries (R17: institution, ownership, regions, insurance type)."""
    body = {
        "visit_ref": visit_ref or f"V-{uuid.uuid4().hex[:12]}",
        "physical_institution_id": f"PI-{hospital_id}",
        "institution_ownership": "public",
        "pooling_region": region,
        "insured_region": region,
        "insurance_type": "employee",
        "patient": {"national_id": national_id or f"370102{random.randrange(10**12):012d}", "name": "Zhang San"},
        "physician_id": physician_id,
        "physician_signature": "sig-ok",
        "diagnosis_code": "E11.9",
        "diagnosis_name": "type 2 diabetes",
        "original_diagnosis_code": "E11.9",
        "original_diagnosis_date": (original_diagnosis_date or date.today() - timedelta(days=30)).isoformat(),
        "original_institution_id": original_institution_id,
        "verification_method": "e_voucher",
        "consultation_fee": consultation_fee,
    }
    if not registry_facts:
        for name in ("physical_institution_id", "institution_ownership", "pooling_region", "insured_region",
                     "insurance_type"):
            del body[name]
    return body


def prescription_body(encounter_id: str, *, days: int = 28, quantity: int = 4,
                      prescription_ref: str | None = None) -> dict[str, Any]:
    """``POST /hospital/prescriptions``: metformin from the reference catalog for the visit ``encounter_id``."""
    return {
        "prescription_ref": prescription_ref or f"RX-{uuid.uuid4().hex[:12]}",
        "encounter_id": encounter_id,
        "physician_signature": "sig-ok",
        "items": [{"drug_code": CATALOG_METFORMIN, "name": "metformin", "spec": "0.5g*30", "quantity": quantity,
                   "days_supply": days, "unit_price": "11.00", "category": "A"}],
        "first_visit_drug_codes": [CATALOG_METFORMIN],
    }


def random_trace_codes(n: int) -> list[str]:
    """``n`` random 20-digit drug trace codes."""
    return [f"{random.randrange(10**19, 10**20)}" for _ in range(n)]


def dispense_body(quantity: int = 4, codes: Sequence[str] | None = None) -> dict[str, Any]:
    """``POST /pharmacy/prescriptions/{id}/dispenses``: ``quantity`` boxes of the prescription's metformin."""
    return {"lines": [{"drug_code": CATALOG_METFORMIN, "quantity": quantity, "unit_price": "11.00",
                       "trace_codes": list(codes) if codes is not None else random_trace_codes(quantity)}]}


# --- a demo day: parties, patients and what each of them does, with planted misbehaviour ------------------------
# ``plan_day(seed, size)`` is pure and deterministic: the same seed and size give the same day (ids, patients,
# prescriptions, trace codes, keys). ``services.cli.demo`` carries it out through the HTTP API and the Kafka intake.

DAY_REGIONS = ("370100", "220100")  # Jinan and Changchun (reference regions with policies)
DAY_DRUGS = {  # diagnosis -> drugs of the reference catalog prescribed for it (categories A and B, national caps)
    ("E11.9", "type 2 diabetes"): ("XA10BAA001A001030101", "XA10BBA002A001280101", "XA10AEB007A002260101",
                                   "XA10BKB006A002240101"),  # metformin, gliclazide, insulin glargine, dapagliflozin
    ("I10", "essential hypertension"): ("XC08CAA009A001020101", "XC08CAB009A002030101"),  # amlodipine
    ("J44.9", "chronic obstructive pulmonary disease"): ("XR03AKB038A002230101",  # budesonide/formoterol
                                                         "XR03BBB039A002070101"),  # tiotropium
}
CHRONIC_DISEASES = (("E11", "diabetes mellitus type 2"), ("I10", "essential hypertension"),
                    ("J44", "chronic obstructive pulmonary disease"))

# The planted misbehaviour: what is done, and how the platform must answer (a refusal's rule id, or a finding /
# flag that appears afterwards).
PLANTS = {
    "reused_trace_code": ("a pharmacy scans a trace code another sale already used", "refused", R8),
    "suspended_physician": ("a physician the agency suspended this morning issues a prescription", "refused", R2),
    "long_rx_no_emergency": ("84 days' supply with no public-health emergency declared", "refused", R4),
    "no_offline_diagnosis": ("a follow-up whose 'original diagnosis' was made at the internet hospital itself",
                             "refused", R16),
    "doctor_shopping": ("one patient gets the same drug from two physicians of two hospitals, supplies overlapping",
                        "finding", "FR-DOCTOR-SHOP"),
    "price_above_cap": ("a retail pharmacy charges above the drug's price cap", "flag", R7),
}


@dataclass(frozen=True)
class DayHospital:
    hospital_id: str
    physical_id: str
    region: str
    name: str
    physicians: tuple[str, ...]
    pharmacist_id: str


@dataclass(frozen=True)
class DayPharmacy:
    pharmacy_id: str
    region: str
    name: str


@dataclass(frozen=True)
class DayPatient:
    national_id: str
    name: str
    insured_region: str
    insurance_type: str  # employee / resident
    treated_region: str  # where the patient lives now and is treated (off-site when not the insured region)
    filed_for: str | None  # 长期异地就医备案 for the treatment region (off-site patients), else None
    diagnosis: tuple[str, str]


@dataclass(frozen=True)
class DayItem:
    drug_code: str
    quantity: int
    days_supply: int


@dataclass
class DayRx:
    key: str
    patient: int  # index into DayPlan.patients
    hospital_id: str
    physician_id: str
    visit_ref: str
    prescription_ref: str
    items: tuple[DayItem, ...]
    original_institution_id: str
    channel: str = "http"  # "http" or "kafka" (rx.inbound.<hospital>)
    preferred_pharmacy_id: str | None = None
    collect: bool = False
    plant: str | None = None
    over_cap: bool = False
    reuse_code_of: str | None = None  # key of the prescription whose first code this dispense scans again
    trace_codes: tuple[str, ...] = ()


@dataclass
class DayPlan:
    seed: int
    size: int
    tag: str
    hospitals: list[DayHospital]
    pharmacies: list[DayPharmacy]
    enterprise_id: str
    patients: list[DayPatient]
    prescriptions: list[DayRx]

    def hospital(self, hospital_id: str) -> DayHospital:
        return next(h for h in self.hospitals if h.hospital_id == hospital_id)

    def planted(self, plant: str) -> list[DayRx]:
        return [rx for rx in self.prescriptions if rx.plant == plant]


def physician_key(tag: str, physician_id: str) -> Any:
    """The physician's Ed25519 signing key, derived from the day's tag (deterministic; a demo's HIS holds it)."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rxtrail-demo/{tag}/{physician_id}".encode()).digest())


def suspended_physician(tag: str) -> str:
    """The first hospital's physician the agency suspends in the morning (no honest patient sees them)."""
    return f"DR-{tag}-JN1-S"


def _codes(rng: random.Random, n: int) -> tuple[str, ...]:
    return tuple(str(rng.randrange(10**19, 10**20)) for _ in range(n))


def _national_id(rng: random.Random, region: str, i: int) -> str:
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 60))
    return f"{region[:4]}{rng.randrange(10, 99)}{born:%Y%m%d}{i % 1000:03d}{rng.randrange(0, 10)}"


def plan_day(seed: int, size: int) -> DayPlan:
    """A day of ``size`` patients over three internet hospitals on three physical institutions in two regions,
    ``max(4, min(20, size // 5))`` pharmacies split across the regions, one delivery enterprise; employee and
    resident patients, some treated off-site (with and without 备案), a quarter of the visits and prescriptions sent
    over the Kafka intake; and one of each planted misbehaviour (``PLANTS``)."""
    if size < 8:
        raise ValueError("a demo day needs at least 8 patients")
    rng = random.Random(seed)
    tag = f"D{seed}N{size}"
    a, b = DAY_REGIONS
    hospitals = [
        DayHospital(f"IH-{tag}-JN1", f"PI-{tag}-JN1", a, "济南第一互联网医院",
                    tuple(f"DR-{tag}-JN1-{i}" for i in range(4)), f"PHM-{tag}-JN1"),
        DayHospital(f"IH-{tag}-JN2", f"PI-{tag}-JN2", a, "泉城互联网医院",
                    tuple(f"DR-{tag}-JN2-{i}" for i in range(3)), f"PHM-{tag}-JN2"),
        DayHospital(f"IH-{tag}-CC1", f"PI-{tag}-CC1", b, "长春互联网医院",
                    tuple(f"DR-{tag}-CC1-{i}" for i in range(3)), f"PHM-{tag}-CC1"),
    ]
    n_pharmacies = max(4, min(20, size // 5))
    pharmacies = [DayPharmacy(f"PY-{tag}-{i:02d}", a if i % 5 < 3 else b, f"大药房 {i:02d}")
                  for i in range(n_pharmacies)]
    patients: list[DayPatient] = []
    for i in range(size + len(PLANTS) + 1):  # the planted misbehaviour has patients of its own (local, Jinan)
        planted = i >= size
        treated = a if planted or rng.random() < 0.6 else b
        other = b if treated == a else a
        offsite = not planted and (i < 2 or rng.random() < 0.08)  # at least one with 备案 and one without
        insured = other if offsite else treated
        filed = treated if offsite and (i == 0 or (i > 1 and rng.random() < 0.5)) else None
        diagnosis = rng.choice(sorted(DAY_DRUGS))
        patients.append(DayPatient(_national_id(rng, insured, i), f"患者{i:04d}", insured,
                                   "employee" if rng.random() < 0.65 else "resident", treated, filed, diagnosis))
    by_region = {r: [h for h in hospitals if h.region == r] for r in DAY_REGIONS}
    prescriptions: list[DayRx] = []

    def rx(key: str, patient: int, hospital: DayHospital, physician: str, **kw: Any) -> DayRx:
        p = patients[patient]
        drugs = DAY_DRUGS[p.diagnosis]
        items = kw.pop("items", None) or (DayItem(rng.choice(drugs), rng.randint(1, 3), 28),)
        packs = sum(i.quantity for i in items)
        made = DayRx(key=key, patient=patient, hospital_id=hospital.hospital_id, physician_id=physician,
                     visit_ref=f"V-{tag}-{key}", prescription_ref=f"RX-{tag}-{key}", items=items,
                     original_institution_id=kw.pop("original_institution_id", hospital.physical_id),
                     trace_codes=_codes(rng, packs), **kw)
        prescriptions.append(made)
        return made

    for i, p in enumerate(patients[:size]):
        hospital = rng.choice(by_region[p.treated_region])
        local = [ph for ph in pharmacies if ph.region == p.treated_region]
        rx(f"P{i:05d}", i, hospital, rng.choice(hospital.physicians),
           channel="kafka" if rng.random() < 0.25 else "http",
           preferred_pharmacy_id=rng.choice(local).pharmacy_id if rng.random() < 0.5 else None,
           collect=rng.random() < 0.15)
    # the planted misbehaviour, each on a patient of its own treated in Jinan
    h1, h2 = hospitals[0], hospitals[1]
    own = iter(range(size, len(patients)))
    first = next(r for r in prescriptions if r.hospital_id == h1.hospital_id and r.channel == "http")
    rx("X-REUSE", next(own), h1, h1.physicians[0], plant="reused_trace_code", reuse_code_of=first.key)
    rx("X-SUSPENDED", next(own), h1, suspended_physician(tag), plant="suspended_physician")
    long_patient = next(own)
    rx("X-LONG", long_patient, h1, h1.physicians[0], plant="long_rx_no_emergency",
       items=(DayItem(DAY_DRUGS[patients[long_patient].diagnosis][0], 3, 84),))
    rx("X-NO-OFFLINE", next(own), h1, h1.physicians[1], plant="no_offline_diagnosis",
       original_institution_id=h1.hospital_id)
    shop_patient = next(own)
    drug = DAY_DRUGS[patients[shop_patient].diagnosis][0]
    rx("X-SHOP-1", shop_patient, h1, h1.physicians[2], plant="doctor_shopping", items=(DayItem(drug, 1, 21),))
    rx("X-SHOP-2", shop_patient, h2, h2.physicians[0], plant="doctor_shopping", items=(DayItem(drug, 1, 21),))
    rx("X-OVER-CAP", next(own), h1, h1.physicians[1], plant="price_above_cap", over_cap=True,
       preferred_pharmacy_id=next(ph.pharmacy_id for ph in pharmacies if ph.region == a))
    return DayPlan(seed, size, tag, hospitals, pharmacies, f"DE-{tag}", patients, prescriptions)
