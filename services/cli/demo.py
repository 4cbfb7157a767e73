"""`rxtrail demo --seed S --size N`: a realistic day of traffic against a running stack (`rxtrail up`).

The day is ``services.simulate.plan_day(seed, size)`` — the same seed and size give the same day. It is carried out
as the parties would:

1. the authority's registries, over HTTP with the agencies' and the regulator's keys (R17: the platform reads
   every fact that decides money or eligibility from them): the two regions' chronic-disease lists, the drugs'
   listings and caps, three internet hospitals on their physical institutions, their physicians (each with the
   Ed25519 public key its prescriptions are signed with), pharmacists, the pharmacies with their drug lists, the
   delivery enterprise, every patient's insurance (employee or resident, insured where they live or off-site, with
   or without 长期异地就医备案), and the morning's suspension of one physician;
2. the hospitals record follow-up visits and issue signed prescriptions, three quarters over HTTP and a quarter over
   the Kafka intake (``rx.inbound.<hospital>``; refusals come back on ``rx.rejections``);
3. the hospitals' pharmacists approve; the ROUTER worker routes (the patient's chosen pharmacy or the rule's);
   the pharmacies accept, dispense with one trace code per pack, deliver through the delivery enterprise or hand
   over in person; the SETTLEMENT worker settles;
4. the planted misbehaviour (``services.simulate.PLANTS``): a reused trace code, a suspended physician, a long
   prescription outside an emergency, a follow-up without an offline diagnosis, doctor shopping, a price above the
   cap — each must be refused with its rule id or show up as a flag or a finding;
5. a summary: parties, traffic per channel, what was refused and why, the findings, money per region.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx

from services.infra.settings import Settings
from services.simulate import (
    CHRONIC_DISEASES,
    DAY_DRUGS,
    DAY_REGIONS,
    PLANTS,
    DayPlan,
    DayRx,
    physician_key,
    plan_day,
    suspended_physician,
)

ORIGINAL_DIAGNOSIS_DAYS = 30
DELIVERY_FEE = "6.00"
OVER_CAP = Decimal("1.30")  # the planted price: 30 % above the cap
CENT = Decimal("0.01")


class DemoError(RuntimeError):
    """The demo cannot go on (stack not running, a step answered unexpectedly, a worker did not act in time)."""


@dataclass
class Outcome:
    """What happened to one planned prescription."""

    rx: DayRx
    prescription_id: str = ""
    status: str = "planned"
    refused_rule: str | None = None
    refused_reason: str = ""
    refused_at: str = ""  # the step: visit, prescription, dispense
    pharmacy_id: str | None = None


@dataclass
class DemoReport:
    seed: int
    size: int
    tag: str
    plan: DayPlan
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    steps: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    plants: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    money: list[dict[str, Any]] = field(default_factory=list)
    regulator_key: str = ""
    trail_of: str = ""
    trail_pharmacy: str = ""
    registered_via: str = ""
    elapsed_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


class _Http:
    """HTTP helper shared by the worker threads: each call names its step and the status it expects."""

    def __init__(self, api: str, report: DemoReport, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=api, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        self.report = report

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, step: str, token: str, path: str, body: dict[str, Any] | None = None,
             key: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if key:
            headers["Idempotency-Key"] = key[:100]
        for attempt in range(5):
            try:
                r = self.http.request(method, path, json=body, params=params or None, headers=headers)
            except httpx.TransportError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
                continue
            if r.status_code not in (429, 503):
                break
            time.sleep(0.2 * (attempt + 1))  # the API sheds load: back off and try again
        self.report.steps[step] += 1
        return r

    def post(self, step: str, token: str, path: str, body: dict[str, Any], key: str | None = None,
             ok: Iterable[int] = (200, 201)) -> Any:
        r = self.call("POST", step, token, path, body, key)
        if r.status_code not in tuple(ok):
            raise DemoError(f"{step}: POST {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def get(self, token: str, path: str, **params: Any) -> Any:
        r = self.call("GET", "read", token, path, **params)
        if r.status_code != 200:
            raise DemoError(f"GET {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()


def check_stack(api: str, database_url: str) -> None:
    """A clear error when the stack is not up: the API's health and a database connection."""
    import psycopg

    try:
        health = httpx.get(f"{api}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DemoError(f"no rxtrail API answers at {api} ({exc.__class__.__name__}); "
                        "start the stack with `rxtrail up` (or pass --api)") from exc
    if not health.get("database"):
        raise DemoError(f"the API at {api} reports no database: {health}")
    try:
        with psycopg.connect(database_url, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        raise DemoError(f"cannot reach PostgreSQL at {database_url}; is `rxtrail up` running? ({exc})") from exc


def _keys(database_url: str, parties: list[str], label: str) -> dict[str, str]:
    import psycopg

    from services.adapters.api_keys import create_key, ensure_schema, parse_party

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        return {p: create_key(conn, parse_party(p), datetime.now(UTC), label=label) for p in parties}


def _wait(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.3) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def _parallel(workers: int, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# --- the registries --------------------------------------------------------------------------------------------
# One POST per registry command (services/api/routes/registry.py, ``REGISTRY``/<what>); the sender (changed_by)
# comes from the key. Where this API has no registry routes yet, the same commands go through the application
# layer (``services.bootstrap.build_application``) with the same senders, and the summary says so.
REGISTRY = "/registry"
REGISTRY_COMMANDS = {  # <what> -> the registry command it sends (services.application.commands)
    "chronic-diseases": "AddChronicDisease", "drugs": "ListDrug", "price-caps": "SetPriceCap",
    "payment-standards": "SetPaymentStandard", "institutions": "RegisterInstitution",
    "physicians": "RegisterPhysician", "pharmacists": "RegisterPharmacist", "pharmacies": "DesignatePharmacy",
    "delivery-enterprises": "RegisterDeliveryEnterprise", "patient-insurance": "RegisterPatientInsurance",
    "off-site-filings": "RecordOffSiteFiling", "physician-suspensions": "SuspendPhysician",
    "chronic-entitlements": "GrantChronicEntitlement",
}


SHARED_FACTS = {"chronic-diseases", "drugs", "price-caps", "payment-standards"}
"""Facts every demo day shares (the national catalog, the regions' lists): registered once, by the first run or
the seed; a later run's registration is refused as a repeat, and that is fine."""


class _Registrar:
    """Sends registry facts: over HTTP while the API has the routes, else through the application layer."""

    def __init__(self, http: _Http, report: DemoReport, senders: dict[str, str], settings: Settings) -> None:
        self.http, self.report, self.senders, self.settings = http, report, senders, settings
        self.via: str | None = None
        self.pending: list[tuple[str, Any]] = []

    def send(self, step: str, token: str, what: str, body: dict[str, Any], key: str) -> None:
        if self.via is None or self.via == "http":
            r = self.http.call("POST", f"registry: {step}", token, f"{REGISTRY}/{what}", body, key)
            if r.status_code == 404 and self.via is None and "Not Found" in r.text:
                self.via = "application layer (this API has no registry routes)"
                self.report.steps[f"registry: {step}"] -= 1  # counted again below
            else:
                self.via = "http"
                if r.status_code not in (200, 201, 409):  # 409: registered before (an earlier run, the seed)
                    raise DemoError(f"registry {what}: POST {REGISTRY}/{what} answered {r.status_code}: {r.text[:400]}")
                return
        from services.application import commands as c

        cls = getattr(c, REGISTRY_COMMANDS[what])
        self.pending.append((what, cls.model_validate({**body, "command_id": key[:200],
                                                       "changed_by": self.senders[token]})))
        self.report.steps[f"registry: {step}"] += 1

    def flush(self) -> None:
        if not self.pending:
            return
        from services.bootstrap import build_application

        app = build_application(self.settings)
        try:
            for at in range(0, len(self.pending), 200):
                batch = self.pending[at:at + 200]
                for (what, _), outcome in zip(batch, app.apply_batch([cmd for _, cmd in batch]), strict=True):
                    if not outcome.ok and not (what in SHARED_FACTS and outcome.error in ("IllegalTransition", "AlreadyExists")):
                        raise DemoError(f"registry {outcome.command_type} refused: {outcome.error} "
                                        f"{outcome.rule_id or ''} {outcome.reason}")
        finally:
            app.close()
        self.pending.clear()


def _register(http: _Http, report: DemoReport, keys: dict[str, str], senders: dict[str, str], plan: DayPlan,
              workers: int, settings: Settings) -> str:
    """Register the day's facts; returns how they went (over HTTP, or through the application layer)."""
    from services.domain.signature import public_key_hex
    from services.reference import load_reference

    reference = load_reference()
    regulator = keys["regulator"]
    agency = {r: keys[f"agency:{r}"] for r in DAY_REGIONS}
    registrar = _Registrar(http, report, senders, settings)

    def reg(step: str, token: str, what: str, body: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]
        registrar.send(step, token, what, body, key=f"demo:{plan.tag}:{what}:{digest}")

    # the regulator: chronic-disease lists, the day's drugs with their caps and payment standards
    for region in DAY_REGIONS:
        for code, name in CHRONIC_DISEASES:
            reg("chronic diseases", regulator, "chronic-diseases",
                {"region": region, "disease_code": code, "name": name, "effective_from": "2024-01-01"})
    for codes in DAY_DRUGS.values():
        for code in codes:
            drug = reference.drug(code)
            assert drug is not None, code
            reg("drug listings", regulator, "drugs",
                {"drug_code": code, "name": drug.name, "spec": drug.spec, "category": str(drug.category),
                 "chronic_list": True, "effective_from": "2024-01-01"})
            cap = reference.price_cap(code, "*")
            for region in DAY_REGIONS:
                reg("price caps", regulator, "price-caps",
                    {"drug_code": code, "region": region, "cap": str(cap), "effective_from": "2024-01-01"})
                reg("payment standards", regulator, "payment-standards",
                    {"drug_code": code, "region": region, "amount": str(cap), "effective_from": "2024-01-01"})
    # each region's agency: institutions, physicians, pharmacists, pharmacies, the delivery enterprise
    drug_codes = sorted({c for codes in DAY_DRUGS.values() for c in codes})
    for h in plan.hospitals:
        token = agency[h.region]
        reg("institutions", token, "institutions",
            {"institution_id": h.physical_id, "name": h.name.replace("互联网医院", "人民医院"),
             "institution_kind": "physical", "ownership": "public", "level": "tertiary", "region": h.region,
             "agreement_no": f"AG-{h.physical_id}"})
        reg("institutions", token, "institutions",
            {"institution_id": h.hospital_id, "name": h.name, "institution_kind": "internet",
             "physical_institution_id": h.physical_id, "ownership": "public", "level": "tertiary",
             "region": h.region, "agreement_no": f"AG-{h.hospital_id}"})
        physicians = list(h.physicians)
        if h is plan.hospitals[0]:
            physicians.append(suspended_physician(plan.tag))
        for i, physician in enumerate(physicians):
            reg("physicians", token, "physicians",
                {"physician_id": physician, "hospital_id": h.hospital_id, "name": f"医师 {physician[-5:]}",
                 "qualification_no": f"QP-{physician}", "physician_code": f"D{plan.tag}{h.hospital_id[-3:]}{i:02d}",
                 "public_key": public_key_hex(physician_key(plan.tag, physician))})
        reg("pharmacists", token, "pharmacists",
            {"pharmacist_id": h.pharmacist_id, "employer_id": h.hospital_id, "name": f"药师 {h.pharmacist_id[-3:]}",
             "qualification_no": f"QR-{h.pharmacist_id}"})
    for p in plan.pharmacies:
        reg("pharmacies", agency[p.region], "pharmacies",
            {"pharmacy_id": p.pharmacy_id, "name": p.name, "pooling_region": p.region,
             "agreement_no": f"AG-{p.pharmacy_id}", "drug_codes": drug_codes, "chronic_qualified": True})
    reg("delivery enterprises", agency[DAY_REGIONS[0]], "delivery-enterprises",
        {"enterprise_id": plan.enterprise_id, "name": "顺路医药配送", "region": DAY_REGIONS[0], "gsp_qualified": True,
         "gsp_certificate_no": f"GSP-{plan.enterprise_id}"})

    # every patient's insurance, and the off-site filings (by the insured region's agency)
    def patient(p: Any) -> None:
        reg("patient insurance", agency[p.insured_region], "patient-insurance",
            {"patient_national_id": p.national_id, "insured_region": p.insured_region,
             "insurance_type": p.insurance_type, "effective_from": "2024-01-01"})
        reg("chronic entitlements", agency[p.insured_region], "chronic-entitlements",
            {"patient_national_id": p.national_id, "disease_code": p.diagnosis[0].split(".")[0],
             "effective_from": "2024-01-01"})
        if p.filed_for:
            reg("off-site filings", agency[p.insured_region], "off-site-filings",
                {"patient_national_id": p.national_id, "filing_no": f"BA-{p.national_id[-8:]}",
                 "region": p.filed_for, "valid_from": (date.today() - timedelta(days=90)).isoformat()})

    _parallel(workers, patient, plan.patients)
    # the morning's suspension
    reg("physician suspended", agency[plan.hospitals[0].region], "physician-suspensions",
        {"physician_id": suspended_physician(plan.tag), "reason": "吊销执业资格调查中 under investigation"})
    registrar.flush()
    return registrar.via or "http"


# --- the parties' request bodies ------------------------------------------------------------------------------

def _visit_body(plan: DayPlan, rx: DayRx) -> dict[str, Any]:
    p = plan.patients[rx.patient]
    code, name = p.diagnosis
    return {
        "visit_ref": rx.visit_ref,
        "patient": {"national_id": p.national_id, "name": p.name},
        "physician_id": rx.physician_id,
        "physician_signature": f"visit-{rx.visit_ref}",
        "diagnosis_code": code,
        "diagnosis_name": name,
        "original_diagnosis_code": code,
        "original_diagnosis_date": (date.today() - timedelta(days=ORIGINAL_DIAGNOSIS_DAYS)).isoformat(),
        "original_institution_id": rx.original_institution_id,
        "verification_method": "e_voucher",
        "consultation_fee": "10.00",  # R15: at most the region's outpatient consultation price
    }


def _items(rx: DayRx) -> list[dict[str, Any]]:
    from services.reference import load_reference

    reference = load_reference()
    out = []
    for item in rx.items:
        drug = reference.drug(item.drug_code)
        cap = reference.price_cap(item.drug_code, "*")
        assert drug is not None and cap is not None
        out.append({"drug_code": item.drug_code, "name": drug.name, "spec": drug.spec, "quantity": item.quantity,
                    "days_supply": item.days_supply, "unit_price": str(cap.quantize(CENT)),
                    "category": str(drug.category)})
    return out


def _prescription_body(plan: DayPlan, rx: DayRx) -> dict[str, Any]:
    from events.prescription import PrescriptionItem
    from services.application.ids import encounter_id_for
    from services.domain.signature import sign_prescription

    items = _items(rx)
    encounter = encounter_id_for(rx.hospital_id, rx.visit_ref)
    code = plan.patients[rx.patient].diagnosis[0]
    signature = sign_prescription(
        physician_key(plan.tag, rx.physician_id), hospital_id=rx.hospital_id, prescription_ref=rx.prescription_ref,
        encounter_id=encounter, physician_id=rx.physician_id, diagnosis_code=code,
        items=[PrescriptionItem.model_validate(i) for i in items], justification=None,
        preferred_pharmacy_id=rx.preferred_pharmacy_id)
    body: dict[str, Any] = {"prescription_ref": rx.prescription_ref, "encounter_id": str(encounter),
                            "physician_signature": signature, "items": items,
                            "first_visit_drug_codes": [i["drug_code"] for i in items]}
    if rx.preferred_pharmacy_id:
        body["preferred_pharmacy_id"] = rx.preferred_pharmacy_id
    return body


def _dispense_body(rx: DayRx, codes: tuple[str, ...], pharmacy_id: str, over_cap: bool = False) -> dict[str, Any]:
    """One trace code per pack, at the pharmacy's own price: 88 % to 98 % of the cap (each pharmacy and drug its own,
    deterministic), or 30 % above the cap when planted."""
    lines, at = [], 0
    for item in _items(rx):
        cap = Decimal(item["unit_price"])
        factor = OVER_CAP if over_cap else Decimal("0.88") + Decimal(zlib.crc32(
            f"{pharmacy_id}/{item['drug_code']}".encode()) % 6) * Decimal("0.02")
        lines.append({"drug_code": item["drug_code"], "quantity": item["quantity"],
                      "unit_price": str((cap * factor).quantize(CENT)),
                      "trace_codes": list(codes[at:at + item["quantity"]])})
        at += item["quantity"]
    return {"lines": lines}


# --- the Kafka intake -------------------------------------------------------------------------------------------

def _ensure_inbound_topics(bootstrap: str, plan: DayPlan, partitions: int) -> None:
    from events import topics
    from services.infra.kafka_admin import ensure_topics_async

    asyncio.run(ensure_topics_async(bootstrap, [topics.inbound_topic(h.hospital_id) for h in plan.hospitals],
                                    partitions=partitions))


def _send_kafka(bootstrap: str, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for topic, key, value in messages:
                await producer.send(topic, key=key.encode(), value=json.dumps(value, ensure_ascii=False).encode())
            await producer.flush()
        finally:
            await producer.stop()

    if messages:
        asyncio.run(send())


def _kafka_rejections(bootstrap: str, refs: set[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """The intake's refusals (``rx.rejections``) of the commands this run sent, by command reference."""
    from aiokafka import AIOKafkaConsumer

    from events import topics

    async def read() -> dict[str, dict[str, Any]]:
        consumer = AIOKafkaConsumer(topics.REJECTIONS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        found: dict[str, dict[str, Any]] = {}
        try:
            deadline, quiet = asyncio.get_running_loop().time() + timeout_s, 0
            while asyncio.get_running_loop().time() < deadline and quiet < 3:  # read to the end of the topic
                batch = await consumer.getmany(timeout_ms=300)
                quiet = 0 if batch else quiet + 1
                for records in batch.values():
                    for record in records:
                        try:
                            body = json.loads(record.value)
                        except (TypeError, ValueError):
                            continue
                        ref = str(body.get("command_id") or "")
                        if ref in refs:
                            found[ref] = body
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read()) if refs else {}


def _await_kafka(http: _Http, bootstrap: str, pending: dict[str, tuple[Outcome, str, str]], step: str, done: str,
                 timeout_s: float) -> None:
    """Wait until every command sent over the intake (``pending``: command reference → (outcome, token, path of
    what it creates)) is recorded (the path answers 200) or refused on ``rx.rejections``."""
    deadline, last_rejections = time.monotonic() + timeout_s, 0.0
    while pending:
        for ref, (o, token, path) in list(pending.items()):
            if http.call("GET", "read", token, path).status_code == 200:
                o.status = done
                del pending[ref]
        if pending and time.monotonic() - last_rejections > 3:
            last_rejections = time.monotonic()
            for ref, rej in _kafka_rejections(bootstrap, set(pending), 5).items():
                o = pending.pop(ref)[0]
                o.status, o.refused_at, o.refused_rule = "refused", f"{step} (kafka)", rej.get("rule")
                o.refused_reason = str(rej.get("reason", ""))[:300]
        if pending and time.monotonic() > deadline:
            raise DemoError(f"the Kafka intake neither recorded nor refused {len(pending)} {step}(s) within "
                            f"{timeout_s:.0f}s (is the intake running? see <data dir>/logs/intake.log)")
        if pending:
            time.sleep(0.5)


# --- the day ----------------------------------------------------------------------------------------------------

def run_demo(seed: int = 1, size: int = 2000, api: str | None = None, settings: Settings | None = None,
             progress: Callable[[str], None] | None = None, timeout_s: float = 120.0, workers: int = 8) -> DemoReport:
    """Drive the day; returns the report (raises DemoError when a step goes wrong)."""
    from services.application.ids import encounter_id_for, prescription_id_for

    say = progress or (lambda _msg: None)
    settings = settings or Settings()
    database_url = settings.resolved_database_url()
    bootstrap = settings.resolved_kafka_bootstrap()
    api = (api or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
    check_stack(api, database_url)
    started = time.monotonic()
    plan = plan_day(seed, size)
    report = DemoReport(seed=seed, size=size, tag=plan.tag, plan=plan,
                        outcomes={rx.key: Outcome(rx) for rx in plan.prescriptions})
    _ensure_inbound_topics(bootstrap, plan, settings.partitions)  # the intake sees new topics within 30 s

    say(f"day {plan.tag}: {len(plan.hospitals)} internet hospitals, {len(plan.pharmacies)} pharmacies, "
        f"{len(plan.patients)} patients, {len(plan.prescriptions)} prescriptions planned")
    regulator = f"REG-DEMO-{plan.tag}"
    keys_of = _keys(database_url, [f"regulator:{regulator}", *[f"agency:{r}" for r in DAY_REGIONS]],
                    f"demo {plan.tag}")
    keys = {"regulator": keys_of[f"regulator:{regulator}"], **{k: v for k, v in keys_of.items()
                                                               if k.startswith("agency:")}}
    senders = {token: party for party, token in keys_of.items()}
    report.regulator_key = keys["regulator"]
    http = _Http(api, report)
    try:
        say("registries: the authority's facts (agencies and the regulator, over HTTP)")
        report.registered_via = _register(http, report, keys, senders, plan, workers, settings)
        parties = ([f"hospital:{h.hospital_id}" for h in plan.hospitals]
                   + [f"pharmacist:{h.pharmacist_id}" for h in plan.hospitals]
                   + [f"pharmacy:{p.pharmacy_id}" for p in plan.pharmacies])
        keys.update(_keys(database_url, parties, f"demo {plan.tag}"))
        report.steps["API keys created"] = len(keys)
        _day(http, report, plan, keys, bootstrap, database_url, timeout_s, workers, encounter_id_for,
             prescription_id_for, say)
    finally:
        http.close()
    report.elapsed_s = time.monotonic() - started
    return report


def _refused(o: Outcome, step: str, r: httpx.Response) -> None:
    try:
        body = r.json()
    except ValueError:
        body = {}
    o.status, o.refused_at = "refused", step
    o.refused_rule = body.get("rule")
    o.refused_reason = str(body.get("reason") or body.get("detail") or r.text)[:300]


def _day(http: _Http, report: DemoReport, plan: DayPlan, keys: dict[str, str], bootstrap: str, database_url: str,
         timeout_s: float, workers: int, encounter_id_for: Callable[[str, str], UUID],
         prescription_id_for: Callable[[str, str], UUID], say: Callable[[str], None]) -> None:
    from events import topics

    hospital = {h.hospital_id: keys[f"hospital:{h.hospital_id}"] for h in plan.hospitals}
    pharmacist = {h.hospital_id: keys[f"pharmacist:{h.pharmacist_id}"] for h in plan.hospitals}
    pharmacy = {p.pharmacy_id: keys[f"pharmacy:{p.pharmacy_id}"] for p in plan.pharmacies}
    outcomes = report.outcomes
    honest = [rx for rx in plan.prescriptions if rx.plant is None]
    planted = [rx for rx in plan.prescriptions if rx.plant is not None]

    # --- visits ------------------------------------------------------------------------------------------------
    say(f"hospitals: {len(plan.prescriptions)} follow-up visits (HTTP and Kafka intake)")
    kafka = [(topics.inbound_topic(rx.hospital_id), f"{plan.tag}:{rx.visit_ref}",
              {"kind": "record_follow_up_visit", "command_id": f"{plan.tag}:{rx.visit_ref}",
               "hospital_id": rx.hospital_id, **_visit_body(plan, rx)}) for rx in honest if rx.channel == "kafka"]
    _send_kafka(bootstrap, kafka)
    report.channels["kafka: visits"] = len(kafka)

    def visit(rx: DayRx) -> None:
        o = outcomes[rx.key]
        r = http.call("POST", "visit recorded", hospital[rx.hospital_id], "/hospital/visits", _visit_body(plan, rx),
                      key=f"{plan.tag}:{rx.visit_ref}")
        if r.status_code == 409:
            _refused(o, "visit", r)
        elif r.status_code not in (200, 201):
            raise DemoError(f"visit {rx.visit_ref}: {r.status_code} {r.text[:300]}")
        else:
            o.status = "visited"

    _parallel(workers, visit, [rx for rx in plan.prescriptions if rx.channel == "http"])
    report.channels["http: visits"] = sum(1 for rx in plan.prescriptions if rx.channel == "http")
    _await_kafka(http, bootstrap, {
        f"{plan.tag}:{rx.visit_ref}": (outcomes[rx.key], hospital[rx.hospital_id],
                                       f"/hospital/visits/{encounter_id_for(rx.hospital_id, rx.visit_ref)}")
        for rx in honest if rx.channel == "kafka"}, "visit", "visited", timeout_s)

    # --- prescriptions -----------------------------------------------------------------------------------------
    say("hospitals: signed prescriptions")
    visited = [rx for rx in plan.prescriptions if outcomes[rx.key].status == "visited"]
    kafka = [(topics.inbound_topic(rx.hospital_id), f"{plan.tag}:{rx.prescription_ref}",
              {"kind": "issue_prescription", "command_id": f"{plan.tag}:{rx.prescription_ref}",
               "hospital_id": rx.hospital_id, **_prescription_body(plan, rx)})
             for rx in visited if rx.channel == "kafka"]
    _send_kafka(bootstrap, kafka)
    report.channels["kafka: prescriptions"] = len(kafka)

    def issue(rx: DayRx) -> None:
        o = outcomes[rx.key]
        r = http.call("POST", "prescription issued", hospital[rx.hospital_id], "/hospital/prescriptions",
                      _prescription_body(plan, rx), key=f"{plan.tag}:{rx.prescription_ref}")
        if r.status_code == 409:
            _refused(o, "prescription", r)
        elif r.status_code not in (200, 201):
            raise DemoError(f"prescription {rx.prescription_ref}: {r.status_code} {r.text[:300]}")
        else:
            o.status, o.prescription_id = "issued", str(r.json()["aggregate_id"])

    _parallel(workers, issue, [rx for rx in visited if rx.channel == "http"])
    report.channels["http: prescriptions"] = sum(1 for rx in visited if rx.channel == "http")
    for rx in visited:
        if rx.channel == "kafka":
            outcomes[rx.key].prescription_id = str(prescription_id_for(rx.hospital_id, rx.prescription_ref))

    _await_kafka(http, bootstrap, {
        f"{plan.tag}:{rx.prescription_ref}": (outcomes[rx.key], hospital[rx.hospital_id],
                                              f"/hospital/prescriptions/{outcomes[rx.key].prescription_id}")
        for rx in visited if rx.channel == "kafka"}, "prescription", "issued", timeout_s)

    # --- review ------------------------------------------------------------------------------------------------
    issued = [rx for rx in plan.prescriptions if outcomes[rx.key].status == "issued"]
    say(f"pharmacists: reviewing {len(issued)} prescriptions")

    def approve(rx: DayRx) -> None:
        o = outcomes[rx.key]
        http.post("approved by pharmacist", pharmacist[rx.hospital_id],
                  f"/pharmacist/prescriptions/{o.prescription_id}/approval", {}, key=f"{plan.tag}:approve:{rx.key}")
        o.status = "approved"

    _parallel(workers, approve, issued)

    # --- routing (the router worker) ---------------------------------------------------------------------------
    say("router: waiting for the routings on the pharmacies' feeds")
    waiting = {outcomes[rx.key].prescription_id: outcomes[rx.key] for rx in issued}
    cursors = dict.fromkeys(pharmacy, 0)

    checked = [time.monotonic()]

    def routed() -> bool:
        if waiting and time.monotonic() - checked[0] > 3:  # routed to a pharmacy of another day (or the seed)?
            checked[0] = time.monotonic()
            for pending in list(waiting.values()):
                seen = http.get(hospital[pending.rx.hospital_id], f"/hospital/prescriptions/{pending.prescription_id}")
                other = seen.get("dispenser_id")
                if seen["status"] != "approved" and other and other not in pharmacy:
                    pharmacy[other] = _keys(database_url, [f"pharmacy:{other}"], f"demo {plan.tag}")[
                        f"pharmacy:{other}"]
                    cursors[other] = 0
        for pid, token in list(pharmacy.items()):
            while True:
                page = http.get(token, "/pharmacy/feed", after=cursors[pid], limit=500)
                cursors[pid] = page["cursor"]
                for item in page["items"]:
                    found = waiting.get(str(item["prescription_id"]))
                    if found is not None and item["event_type"] == "PrescriptionRouted":
                        found.status, found.pharmacy_id = "routed", pid
                        report.steps[f"routed by router ({item['data'].get('basis')})"] += 1
                        del waiting[found.prescription_id]
                if len(page["items"]) < 500:
                    break
        return not waiting

    _wait(f"the router to route {len(waiting)} approved prescriptions (is the router running?)", routed, timeout_s)

    # --- the pharmacies ----------------------------------------------------------------------------------------
    say("pharmacies: accept, dispense one trace code per pack, deliver or hand over")

    def serve(rx: DayRx) -> None:
        o = outcomes[rx.key]
        token, base = pharmacy[str(o.pharmacy_id)], f"/pharmacy/prescriptions/{o.prescription_id}"
        http.post("accepted by pharmacy", token, f"{base}/acceptance", {}, key=f"{plan.tag}:accept:{rx.key}")
        codes = rx.trace_codes
        if rx.reuse_code_of:
            codes = (plan.prescriptions[[p.key for p in plan.prescriptions].index(rx.reuse_code_of)].trace_codes[0],
                     *codes[1:])
        r = http.call("POST", "dispensed", token, f"{base}/dispenses", _dispense_body(rx, codes, str(o.pharmacy_id), rx.over_cap),
                      key=f"{plan.tag}:dispense:{rx.key}")
        if r.status_code == 409:
            _refused(o, "dispense", r)
            return
        if r.status_code not in (200, 201):
            raise DemoError(f"dispense {rx.key}: {r.status_code} {r.text[:300]}")
        o.status = "dispensed"
        if rx.collect:
            http.post("collected in person", token, f"{base}/collection", {"verification_method": "e_voucher"},
                      key=f"{plan.tag}:collect:{rx.key}")
        else:
            r = http.call("POST", "delivery arranged", token, f"{base}/delivery",
                          {"delivery_enterprise_id": plan.enterprise_id, "delivery_fee": DELIVERY_FEE,
                           "fee_disclosed": True}, key=f"{plan.tag}:deliver:{rx.key}")
            if r.status_code == 409:  # e.g. the enterprise does not serve this region: the patient collects
                report.steps[f"delivery refused ({r.json().get('rule')}), collected instead"] += 1
                http.post("collected in person", token, f"{base}/collection", {"verification_method": "e_voucher"},
                          key=f"{plan.tag}:collect:{rx.key}")
            elif r.status_code not in (200, 201):
                raise DemoError(f"delivery {rx.key}: {r.status_code} {r.text[:300]}")
            else:
                http.post("delivered", token, f"{base}/delivered", {"delivery_enterprise_id": plan.enterprise_id},
                          key=f"{plan.tag}:delivered:{rx.key}")
        o.status = "handed over"

    routed_rx = [rx for rx in issued if outcomes[rx.key].status == "routed"]
    _parallel(workers, serve, [rx for rx in routed_rx if rx.reuse_code_of is None])
    for rx in routed_rx:  # the planted reuse scans a code the honest sale above already used
        if rx.reuse_code_of is not None:
            serve(rx)

    # --- settlement (the settlement worker) --------------------------------------------------------------------
    handed = [rx for rx in plan.prescriptions if outcomes[rx.key].status == "handed over"]
    say(f"settlement: waiting for {len(handed)} settlements")

    by_id = {outcomes[rx.key].prescription_id: outcomes[rx.key] for rx in handed}

    def settled() -> bool:
        for token in hospital.values():
            after = 0
            while True:
                page = http.get(token, "/hospital/prescriptions", after=after, limit=500)
                for item in page["items"]:
                    o = by_id.get(str(item["prescription_id"]))
                    if o is not None and item["status"] == "settled":
                        o.status = "settled"
                if page.get("next_cursor") is None:
                    break
                after = page["next_cursor"]
        return all(outcomes[rx.key].status == "settled" for rx in handed)

    _wait("the settlement worker to settle the delivered and collected prescriptions", settled, timeout_s, 1.0)

    # --- what the regulator sees -------------------------------------------------------------------------------
    _check_plants(http, report, plan, keys["regulator"], planted, timeout_s, say)
    report.money = http.get(keys["regulator"], "/regulator/dashboard", days=1)["days"]
    shown = next((o for o in (outcomes[rx.key] for rx in plan.planted("doctor_shopping")) if o.status == "settled"),
                 None) or next((o for o in outcomes.values() if o.status == "settled"), None)
    if shown is not None:
        report.trail_of, report.trail_pharmacy = shown.prescription_id, str(shown.pharmacy_id)


def _check_plants(http: _Http, report: DemoReport, plan: DayPlan, regulator: str, planted: list[DayRx],
                  timeout_s: float, say: Callable[[str], None]) -> None:
    """Each planted misbehaviour: refused with its rule, or visible to the regulator as a flag or a finding."""
    say("regulator: flags and findings of the planted misbehaviour")
    for name, (what, how, expect) in PLANTS.items():
        rxs = [rx for rx in planted if rx.plant == name]
        entry: dict[str, Any] = {"what": what, "expected": f"{how} {expect}", "seen": "", "ok": False,
                                 "prescriptions": [report.outcomes[rx.key].prescription_id for rx in rxs]}
        report.plants[name] = entry
        if how == "refused":
            got = [report.outcomes[rx.key] for rx in rxs]
            entry["seen"] = ", ".join(f"{o.refused_at or o.status}: {o.refused_rule or '—'}" for o in got)
            entry["ok"] = all(o.status == "refused" and o.refused_rule == expect for o in got)

    def flags_and_findings() -> bool:
        for name, (_what, how, expect) in PLANTS.items():
            entry = report.plants[name]
            ids = {i for i in entry["prescriptions"] if i}
            if how == "flag" and not entry["ok"]:
                page = http.get(regulator, "/regulator/flags", rule=expect, limit=500)
                hits = [f for f in page["items"] if str(f["prescription_id"]) in ids]
                entry["seen"] = f"{len(hits)} {expect} flag(s)" if hits else "no flag yet"
                entry["ok"] = bool(hits)
            if how == "finding" and not entry["ok"]:
                r = http.call("GET", "read", regulator, "/regulator/findings", pattern=expect, limit=500)
                if r.status_code == 404:
                    entry["seen"] = "no findings endpoint in this API"
                    continue
                items = r.json()["items"] if r.status_code == 200 else []
                hits = [f for f in items if ids & {str(i) for i in f.get("prescription_ids", [])}]
                entry["seen"] = f"{len(hits)} {expect} finding(s)" if hits else "no finding yet"
                entry["ok"] = bool(hits)
                report.findings = items
        return all(e["ok"] or e["seen"] == "no findings endpoint in this API" for e in report.plants.values()
                   if not str(e["expected"]).startswith("refused"))

    try:
        _wait("the flags and findings of the planted misbehaviour", flags_and_findings, min(timeout_s, 60), 1.0)
    except DemoError:
        pass  # the summary says what was not seen


def print_report(report: DemoReport, console: Any) -> None:
    from rich.table import Table

    plan = report.plan
    parties = Table(title=f"rxtrail demo day {report.tag} (seed {report.seed}, size {report.size})")
    for col in ("parties", "count", "detail"):
        parties.add_column(col)
    parties.add_row("internet hospitals", str(len(plan.hospitals)),
                    ", ".join(f"{h.hospital_id} ({h.region}, on {h.physical_id})" for h in plan.hospitals))
    parties.add_row("pharmacies", str(len(plan.pharmacies)),
                    ", ".join(f"{r}: {sum(1 for p in plan.pharmacies if p.region == r)}" for r in DAY_REGIONS))
    parties.add_row("delivery enterprise", "1", plan.enterprise_id)
    kinds = Counter(p.insurance_type for p in plan.patients)
    offsite = [p for p in plan.patients if p.insured_region != p.treated_region]
    parties.add_row("patients", str(len(plan.patients)),
                    f"{kinds['employee']} employee, {kinds['resident']} resident; {len(offsite)} off-site "
                    f"({sum(1 for p in offsite if p.filed_for)} with 备案)")
    parties.add_row("registered", "", f"through {report.registered_via}")
    console.print(parties)
    traffic = Table(title="traffic")
    traffic.add_column("step")
    traffic.add_column("count", justify="right")
    for step, n in sorted({**report.channels, **report.steps}.items()):
        traffic.add_row(step, str(n))
    console.print(traffic)
    plants = Table(title="planted misbehaviour")
    for col in ("plant", "what", "expected", "seen", "ok"):
        plants.add_column(col)
    for name, e in report.plants.items():
        plants.add_row(name, e["what"], e["expected"], e["seen"], "yes" if e["ok"] else "NO")
    console.print(plants)
    honest_refused = [o for o in report.outcomes.values() if o.rx.plant is None and o.status == "refused"]
    if honest_refused:
        refused = Table(title="other refusals")
        for col in ("prescription", "step", "rule", "reason"):
            refused.add_column(col)
        for o in honest_refused[:30]:
            refused.add_row(o.rx.key, o.refused_at, str(o.refused_rule), o.refused_reason[:120])
        console.print(refused)
    if report.money:
        money = Table(title="today's settlements per region (regulator dashboard)")
        for col in ("region", "issued", "settled", "fund", "personal account", "self-pay", "total", "flags"):
            money.add_column(col, justify="right")
        for d in report.money:
            money.add_row(d["region"], str(d["issued"]), str(d["settled"]), str(d["fund"]),
                          str(d["personal_account"]), str(d["self_pay"]), str(d["total"]), str(d["flags"]))
        console.print(money)
    # plain lines for scripts (and the end-to-end tests): never wrapped, never highlighted
    for name, e in report.plants.items():
        console.print(f"plant {name} expected={e['expected'].replace(' ', ':')} ok={'yes' if e['ok'] else 'no'} "
                      f"prescriptions={','.join(i or '-' for i in e['prescriptions'])}",
                      highlight=False, soft_wrap=True, markup=False)
    console.print(f"registered via={report.registered_via.split(' ')[0]}", highlight=False, soft_wrap=True,
                  markup=False)
    console.print(f"demo day={report.tag} hospitals={','.join(h.hospital_id for h in plan.hospitals)} "
                  f"pharmacies={len(plan.pharmacies)} trail={report.trail_of} pharmacy={report.trail_pharmacy}",
                  highlight=False, soft_wrap=True, markup=False)
    console.print(f"[bold green]demo done[/] in {report.elapsed_s:.1f}s: {len(report.outcomes)} prescriptions, "
                  f"{report.count('settled')} settled, {report.count('refused')} refused by a rule")
