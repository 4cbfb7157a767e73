"""README "Register the parties, then run a trail": a new user registers a hospital, its physician and pharmacist, a
pharmacy and a patient's entitlements over HTTP only (keys with `rxtrail keys create`, the reference data with
`rxtrail registry seed`), then runs a whole trail; the registry events reach rx.events through the relay and the
traceability projection shows who changed which fact when. Real PostgreSQL and Kafka."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services import simulate
from services.api import create_app
from services.application import RxTrail
from services.application import commands as c
from services.cli import app as cli
from services.domain.signature import sign_prescription_request
from tests.support import unique_id
from tests.support.cast import new_national_id
from tests.support.flows import api_keys
from tests.support.read_side import read_side, wait_caught_up

REGION = "220100"
AGENCY = f"agency:{REGION}"


@pytest.fixture(scope="module")
def client(database: str, kafka_bootstrap: str, application: RxTrail) -> Iterator[TestClient]:
    with read_side(database, kafka_bootstrap) as settings, \
            TestClient(create_app(settings, application=application)) as client:
        yield client


def _cli(database: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"RXTRAIL_DATABASE_URL": database})
    return result


def _post(client: TestClient, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 201), f"{path}: {r.status_code} {r.text}"
    return dict(r.json())


def test_a_new_user_registers_every_party_over_http_then_runs_a_trail(client: TestClient, database: str) -> None:
    # the operator: reference data as registry events (rxtrail up does this on start), keys for the authorities
    first = _cli(database, "registry", "seed")
    assert first.exit_code == 0, first.output
    again = _cli(database, "registry", "seed")
    assert again.exit_code == 0 and "already seeded" in again.output, again.output
    keys = api_keys(database, AGENCY, "regulator:NHSA-WALK")
    agency, regulator = keys[AGENCY], keys["regulator:NHSA-WALK"]

    hospital, physician, pharmacist, pharmacy = (unique_id("H"), unique_id("DR"), unique_id("RPH"), unique_id("PH"))
    physical = f"P-{hospital}"
    refused = _cli(database, "keys", "create", "--party", f"hospital:{hospital}")
    assert refused.exit_code == 2 and "not registered" in refused.output  # keys only for registered parties

    # the agency of 220100 registers the parties and the patient's entitlements over HTTP
    key = Ed25519PrivateKey.generate()
    public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    national_id = new_national_id(REGION)
    for path, body in (
        ("institutions", {"institution_id": physical, "name": "长春市人民医院", "institution_kind": "physical",
                          "ownership": "public", "level": "tertiary", "region": REGION, "agreement_no": "AG-1"}),
        ("institutions", {"institution_id": hospital, "name": "长春市人民医院互联网医院", "institution_kind": "internet",
                          "physical_institution_id": physical, "ownership": "public", "level": "tertiary",
                          "region": REGION, "agreement_no": "AG-2"}),
        ("physicians", {"physician_id": physician, "hospital_id": hospital, "name": "王医生", "qualification_no": "Q1",
                        "physician_code": "D220100000001", "public_key": public_key}),
        ("pharmacists", {"pharmacist_id": pharmacist, "employer_id": hospital, "name": "李药师",
                         "qualification_no": "Q2"}),
        ("pharmacies", {"pharmacy_id": pharmacy, "name": "康达大药房", "pooling_region": REGION,
                        "agreement_no": "AG-3", "drug_codes": [simulate.CATALOG_METFORMIN], "chronic_qualified": True}),
        ("patient-insurance", {"patient_national_id": national_id, "insured_region": REGION,
                               "insurance_type": "employee"}),
        ("chronic-entitlements", {"patient_national_id": national_id, "disease_code": "E11"}),
    ):
        _post(client, agency, f"/registry/{path}", body)
    tokens = {}
    for party in (f"hospital:{hospital}", f"pharmacist:{pharmacist}", f"pharmacy:{pharmacy}"):
        made = _cli(database, "keys", "create", "--party", party)
        assert made.exit_code == 0, made.output
        tokens[party.split(":")[0]] = made.output.strip().splitlines()[-1]

    # the trail: visit, prescription (signed with the registered key), review, routing, dispense, collection
    visit = simulate.visit_body(hospital, physician, REGION, national_id=national_id, original_institution_id=physical,
                                original_diagnosis_date=date.today() - timedelta(days=30), consultation_fee="10.00",
                                registry_facts=False)
    encounter = _post(client, tokens["hospital"], "/hospital/visits", visit)["aggregate_id"]
    body = simulate.prescription_body(encounter, prescription_ref=unique_id("RX"))
    body["physician_signature"] = sign_prescription_request(key, body, hospital_id=hospital, physician_id=physician,
                                                            diagnosis_code=visit["diagnosis_code"])
    rx = _post(client, tokens["hospital"], "/hospital/prescriptions", body)["aggregate_id"]
    _post(client, tokens["pharmacist"], f"/pharmacist/prescriptions/{rx}/approval", {})
    _post(client, tokens["hospital"], f"/hospital/prescriptions/{rx}/routing",
          {"pharmacy_id": pharmacy, "basis": "patient_choice"})
    _post(client, tokens["pharmacy"], f"/pharmacy/prescriptions/{rx}/acceptance", {})
    _post(client, tokens["pharmacy"], f"/pharmacy/prescriptions/{rx}/dispenses", simulate.dispense_body(4))
    _post(client, tokens["pharmacy"], f"/pharmacy/prescriptions/{rx}/collection", {"verification_method": "e_voucher"})

    # the registry changes went through rx.events into the traceability projection: who changed which fact when
    wait_caught_up(database)
    r = client.get("/registry/changes", params={"fact_kind": "physician", "fact_id": physician, "limit": 10},
                   headers={"Authorization": f"Bearer {regulator}"})
    assert r.status_code == 200, r.text
    [registered] = r.json()["items"]
    assert (registered["change"], registered["changed_by"]) == ("PhysicianRegistered", AGENCY)
    assert registered["details"]["public_key"] == public_key and registered["effective_from"]
    mine = client.get("/registry/changes", params={"limit": 500}, headers={"Authorization": f"Bearer {agency}"})
    kinds = {(i["fact_kind"], i["fact_id"]) for i in mine.json()["items"]}
    assert {("institution", hospital), ("pharmacist", pharmacist), ("pharmacy", pharmacy)} <= kinds
    assert all(i["changed_by"] == AGENCY for i in mine.json()["items"])
    patient = [i for i in mine.json()["items"] if i["fact_kind"] == "patient"]
    assert patient and all(national_id not in str(i) for i in patient)  # only the pseudonym
    trail = client.get(f"/regulator/prescriptions/{rx}/trail", headers={"Authorization": f"Bearer {regulator}"})
    assert trail.status_code == 200, trail.text
    got = client.get(f"/registry/physicians/{physician}", headers={"Authorization": f"Bearer {agency}"}).json()
    assert got["public_key"] == public_key and got["suspended"] is False


def test_bulk_csv_import_reports_each_row_and_applies_nothing_when_a_row_is_invalid(database: str,
                                                                                   tmp_path: Path) -> None:
    hospital = unique_id("H")
    rows = [{"institution_id": f"P-{hospital}", "name": "医院", "institution_kind": "physical", "ownership": "public",
             "level": "secondary", "region": REGION, "agreement_no": "AG"},
            {"institution_id": hospital, "name": "互联网医院", "institution_kind": "internet",
             "physical_institution_id": f"P-{hospital}", "ownership": "public", "level": "secondary",
             "region": REGION, "agreement_no": "AG"}]
    path = tmp_path / "institutions.csv"

    def write(data: list[dict[str, str]]) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[1]))
            writer.writeheader()
            writer.writerows(data)

    write([rows[0], {**rows[1], "level": "national"}])
    bad = _cli(database, "registry", "import", str(path), "--kind", "institutions", "--as", AGENCY)
    assert bad.exit_code == 2 and "invalid" in bad.output and "nothing was applied" in bad.output
    shown = _cli(database, "registry", "show", "institutions", f"P-{hospital}")
    assert shown.exit_code == 1  # the valid first row was not applied either

    write(rows)
    done = _cli(database, "registry", "import", str(path), "--kind", "institutions", "--as", AGENCY)
    assert done.exit_code == 0 and done.output.count("applied") >= 2, done.output
    repeat = _cli(database, "registry", "import", str(path), "--kind", "institutions", "--as", AGENCY)
    assert repeat.exit_code == 0 and repeat.output.count("already applied") == 2, repeat.output
    other = _cli(database, "registry", "import", str(path), "--kind", "institutions", "--as", "agency:370100")
    assert other.exit_code == 1 and "Forbidden" in other.output  # another region's agency: refused, each row named


def test_registry_commands_name_their_sender(application: RxTrail) -> None:
    outcome = application.handle(c.DesignatePharmacy(changed_by="agency:370100", pharmacy_id=unique_id("PH"),
                                                     name="x", pooling_region=REGION, agreement_no="A"))
    assert (outcome.status, outcome.error) == ("rejected", "Forbidden")
