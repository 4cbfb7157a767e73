"""Helpers for API, intake and end-to-end tests: the registered cast, request bodies (``services.simulate``), API keys,
a live server and the parties' HTTP actors."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import uvicorn
from fastapi.testclient import TestClient

from services import simulate
from services.adapters.api_keys import create_key, ensure_schema, parse_party
from services.application import RxTrail
from services.application import commands as c
from services.bootstrap import build_application
from services.domain.signature import sign_prescription_request
from services.infra.ports import PortTaken, port_is_free, start_on_free_port
from services.infra.settings import Settings
from tests.support import unique_id, wait_until
from tests.support.cast import CHANGCHUN, JINAN, Cast, new_national_id
from tests.support.domain import signing_key, trace_codes

REGION = CHANGCHUN  # pharmacies are paid directly (Jinan pays the delivery enterprise)
OTHER_REGION = JINAN
METFORMIN = simulate.CATALOG_METFORMIN  # in the reference catalog (category A, cap 11.25)
SECRET = b"rxtrail-test-pseudonym-secret-32"


def open_application(database_url: str, **kwargs: Any) -> RxTrail:
    return build_application(Settings(database_url=database_url, pseudonym_secret=SECRET), **kwargs)


def register_cast(app: RxTrail) -> Cast:
    """The cast of ``tests.support.cast``, registered (with its two pharmacies and the strangers)."""
    return Cast(app).register()


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
    """``POST /hospital/visits`` of a new patient whose insurance the cast registers first (R17), at the cast's
    hospital: the registry facts (physical institution, ownership, regions, insurance type) are left to the registry,
    the original diagnosis was made at the hospital's physical institution (R16), the fee is the region's price for
    a tertiary institution (R15)."""
    body = simulate.visit_body(cast.hospital, physician or cast.physician, cast.region,
                               visit_ref=visit_ref or unique_id("V"), national_id=cast.insure(new_national_id(cast.region)),
                               original_diagnosis_date=original_diagnosis_date)
    for fact in c.VISIT_REGISTRY_FACTS:
        body.pop(fact, None)
    body["original_institution_id"] = cast.physical_of(cast.hospital)
    body["consultation_fee"] = CONSULTATION_FEE[cast.region]
    return body


CONSULTATION_FEE = {"220100": "10.00", "370100": "12.00", "532300": "9.00"}
"""R15: the ordinary outpatient consultation price of a tertiary institution (services/reference/policies)."""


def prescription_body(encounter_id: str, *, cast: Cast, days: int = 28, quantity: int = 4,
                      prescription_ref: str | None = None, physician: str | None = None,
                      diagnosis_code: str = "E11.9") -> dict[str, Any]:
    """``POST /hospital/prescriptions`` for a visit of ``cast``'s hospital, signed by ``physician`` (the cast's
    own unless told) over its canonical content (R2); ``diagnosis_code`` is the visit's."""
    body = simulate.prescription_body(encounter_id, days=days, quantity=quantity,
                                      prescription_ref=prescription_ref or unique_id("RX"))
    return sign_body(body, cast, physician=physician, diagnosis_code=diagnosis_code)


def sign_body(body: dict[str, Any], cast: Cast, *, physician: str | None = None,
              diagnosis_code: str = "E11.9") -> dict[str, Any]:
    """``body`` (an IssuePrescription request) with the physician's signature over its content (R2)."""
    signer = physician or cast.physician
    body["physician_signature"] = sign_prescription_request(
        signing_key(signer), body, hospital_id=cast.hospital, physician_id=signer, diagnosis_code=diagnosis_code)
    return body


def dispense_body(quantity: int = 4, codes: Sequence[str] | None = None, *, unit_price: str = "11.00",
                  drug_code: str = METFORMIN) -> dict[str, Any]:
    """A dispense of ``quantity`` packs with one new trace code per pack (R8) unless ``codes``; no cap or payment
    standard: the platform reads them from the registry (R7, R17)."""
    return {"lines": [{"drug_code": drug_code, "quantity": quantity, "unit_price": unit_price,
                       "trace_codes": list(codes if codes is not None else trace_codes(quantity))}]}


def settle_command(prescription_id: str, patient_ref: str, total: str = "44.00",
                   delivery_fee: str = "0.00") -> c.SettlePrescription:
    return c.SettlePrescription(
        prescription_id=prescription_id, patient_ref=patient_ref, verification_method="e_voucher",
        fund=total, personal_account="0.00", self_pay=delivery_fee, delivery_fee=delivery_fee,
        policy_version="2025.1", policy_region=REGION, catalog_region=REGION, settlement_ref=unique_id("S"),
    )


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port (another one if that was taken before uvicorn
    bound it); yields its base URL."""

    def start(port: int) -> tuple[uvicorn.Server, threading.Thread]:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started or not thread.is_alive(), timeout=20, interval=0.02,
                   what="uvicorn to start serving")
        if not server.started:  # uvicorn exits at start when it cannot bind
            if not port_is_free("127.0.0.1", port):
                raise PortTaken("127.0.0.1", port, "uvicorn")
            raise RuntimeError("uvicorn did not start")
        return server, thread

    server, thread = start_on_free_port(start)
    port = server.config.port
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
        r = self.post(self.hospital, "/hospital/prescriptions", prescription_body(self.visit(), cast=self.cast))
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

    def own_accepted(self) -> str:
        """An approved prescription the hospital routed to itself (pharmacy_id null) and accepted, over HTTP."""
        rx = self.approved()
        r = self.post(self.hospital, f"/hospital/prescriptions/{rx}/routing",
                      {"pharmacy_id": None, "basis": "routing_rule"})
        assert r.status_code == 200, r.text
        r = self.post(self.hospital, f"/hospital/prescriptions/{rx}/acceptance", {})
        assert r.status_code == 200, r.text
        return rx
