"""Helpers for API, intake and end-to-end tests: a registered cast, request bodies, API keys, a live server."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import uvicorn
from fastapi.testclient import TestClient

from services.adapters.api_keys import create_key, ensure_schema, parse_party
from services.application import RxTrail, build_application
from services.application import commands as c
from services.infra.ports import free_port, wait_for_port
from tests.support import unique_id

REGION = "220100"  # Changchun: pharmacies are paid directly (Jinan pays the delivery enterprise)
OTHER_REGION = "370100"
METFORMIN = "XA10BAA001A001030101"  # in the reference catalog (category A, cap 11.25)
AMLODIPINE = "XC08CAA001A001010101"
SECRET = b"rxtrail-test-pseudonym-secret-32"

_codes = itertools.count(random.randrange(10**18, 9 * 10**18) * 100)


def trace_codes(n: int) -> list[str]:
    return [f"{next(_codes):020d}"[-20:] for _ in range(n)]


def open_application(database_url: str, **kwargs: Any) -> RxTrail:
    return build_application(database_url, pseudonym_secret=SECRET, **kwargs)


@dataclass(frozen=True)
class Cast:
    """One hospital with its physician and pharmacist, one pharmacy, all in REGION; plus strangers."""

    hospital: str
    physician: str
    pharmacist: str
    pharmacy: str
    other_hospital: str
    other_physician: str
    other_pharmacy: str
    third_party_pharmacist: str
    region: str = REGION


def register_cast(app: RxTrail) -> Cast:
    cast = Cast(hospital=unique_id("H"), physician=unique_id("DR"), pharmacist=unique_id("PHM"),
                pharmacy=unique_id("PY"), other_hospital=unique_id("H"), other_physician=unique_id("DR"),
                other_pharmacy=unique_id("PY"), third_party_pharmacist=unique_id("PHM3"))
    commands: list[c.Command] = [
        c.RegisterPhysician(physician_id=cast.physician, hospital_id=cast.hospital, name="Dr A", qualification_no="Q1"),
        c.RegisterPhysician(physician_id=cast.other_physician, hospital_id=cast.other_hospital, name="Dr B",
                            qualification_no="Q2"),
        c.RegisterPharmacist(pharmacist_id=cast.pharmacist, employer_id=cast.hospital, name="Ph A",
                             qualification_no="Q3"),
        c.RegisterPharmacist(pharmacist_id=cast.third_party_pharmacist, employer_id="REVIEW-CO", name="Ph C",
                             qualification_no="Q5", third_party=True),
        c.DesignatePharmacy(pharmacy_id=cast.pharmacy, name="Pharmacy A", pooling_region=REGION, agreement_no="AG1"),
        c.DesignatePharmacy(pharmacy_id=cast.other_pharmacy, name="Pharmacy B", pooling_region=REGION,
                            agreement_no="AG2"),
    ]
    for outcome in app.apply_batch(commands):
        assert outcome.ok, outcome
    return cast


def api_keys(database_url: str, *parties: str) -> dict[str, str]:
    """``{"hospital:H1": "rx_..."}`` for each party text."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        return {p: create_key(conn, parse_party(p), datetime.now(UTC), label="test") for p in parties}


def auth(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = key
    return headers


def visit_body(cast: Cast, *, visit_ref: str | None = None, physician: str | None = None,
               original_diagnosis_date: date | None = None) -> dict[str, Any]:
    return {
        "visit_ref": visit_ref or unique_id("V"),
        "physical_institution_id": f"PI-{cast.hospital}",
        "institution_ownership": "public",
        "pooling_region": cast.region,
        "insured_region": cast.region,
        "insurance_type": "employee",
        "patient": {"national_id": unique_id("370102199001011234"), "name": "Zhang San"},
        "physician_id": physician or cast.physician,
        "physician_signature": "sig-ok",
        "diagnosis_code": "E11.9",
        "diagnosis_name": "type 2 diabetes",
        "original_diagnosis_code": "E11.9",
        "original_diagnosis_date": (original_diagnosis_date or date.today() - timedelta(days=30)).isoformat(),
        "original_institution_id": "OFFLINE-1",
        "verification_method": "e_voucher",
        "consultation_fee": "20.00",
    }


def prescription_body(encounter_id: str, *, days: int = 28, quantity: int = 4,
                      prescription_ref: str | None = None) -> dict[str, Any]:
    return {
        "prescription_ref": prescription_ref or unique_id("RX"),
        "encounter_id": encounter_id,
        "physician_signature": "sig-ok",
        "items": [{"drug_code": METFORMIN, "name": "metformin", "spec": "0.5g*30", "quantity": quantity,
                   "days_supply": days, "unit_price": "11.00", "category": "A"}],
        "first_visit_drug_codes": [METFORMIN],
    }


def dispense_body(quantity: int = 4, codes: list[str] | None = None) -> dict[str, Any]:
    return {"lines": [{"drug_code": METFORMIN, "quantity": quantity, "unit_price": "11.00", "price_cap": "11.25",
                       "trace_codes": codes if codes is not None else trace_codes(quantity)}]}


def settle_command(prescription_id: str, patient_ref: str, total: str = "44.00",
                   delivery_fee: str = "0.00") -> c.SettlePrescription:
    return c.SettlePrescription(
        prescription_id=prescription_id, patient_ref=patient_ref, verification_method="e_voucher",
        fund=total, personal_account="0.00", self_pay=delivery_fee, delivery_fee=delivery_fee,
        policy_version="2025.1", policy_region=REGION, catalog_region=REGION, settlement_ref=unique_id("S"),
    )


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not wait_for_port("127.0.0.1", port, 20):
        raise RuntimeError("uvicorn did not start")
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Actors:
    def __init__(self, client: TestClient, cast: Cast, keys: dict[str, str]) -> None:
        self.client, self.cast, self.keys = client, cast, keys
        self.hospital = keys[f"hospital:{cast.hospital}"]
        self.other_hospital = keys.get(f"hospital:{cast.other_hospital}", "")
        self.pharmacist = keys[f"pharmacist:{cast.pharmacist}"]
        self.pharmacy = keys[f"pharmacy:{cast.pharmacy}"]
        self.other_pharmacy = keys.get(f"pharmacy:{cast.other_pharmacy}", "")
        self.agency = keys[f"agency:{cast.region}"]
        self.regulator = next(v for k, v in keys.items() if k.startswith("regulator:"))

    def post(self, token: str, path: str, body: dict[str, Any], key: str | None = None) -> Any:
        return self.client.post(path, json=body, headers=auth(token, key))

    def get(self, token: str, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=auth(token))

    def visit(self) -> str:
        r = self.post(self.hospital, "/hospital/visits", visit_body(self.cast))
        assert r.status_code == 201, r.text
        return str(r.json()["aggregate_id"])

    def issue(self) -> str:
        r = self.post(self.hospital, "/hospital/prescriptions", prescription_body(self.visit()))
        assert r.status_code == 201, r.text
        return str(r.json()["aggregate_id"])

    def approved(self) -> str:
        rx = self.issue()
        r = self.post(self.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {})
        assert r.status_code == 200, r.text
        return rx

    def routed(self) -> str:
        rx = self.approved()
        r = self.post(self.hospital, f"/hospital/prescriptions/{rx}/routing",
                      {"pharmacy_id": self.cast.pharmacy, "basis": "patient_choice"})
        assert r.status_code == 200, r.text
        return rx

    def accepted(self) -> str:
        rx = self.routed()
        r = self.post(self.pharmacy, f"/pharmacy/prescriptions/{rx}/acceptance", {})
        assert r.status_code == 200, r.text
        return rx
