"""Bounded input (issue 12 item 2): the limits are part of the types, the largest valid command's events fit a Kafka
message, and the OpenAPI declares every limit the server applies."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from pydantic import TypeAdapter, ValidationError

from events import to_json
from events.base import (
    DRUG_CODES_MAX,
    EVENT_SIZE_MAX,
    GENESIS_HASH,
    ID_LENGTH,
    ITEMS_MAX,
    LONG_TEXT_LENGTH,
    MONEY_MAX,
    NAME_LENGTH,
    PRICE_MAX,
    QUANTITY_MAX,
    REASONS_MAX,
    SEALED_LENGTH,
    TEXT_LENGTH,
    TRACE_CODES_MAX,
    Amount,
    BusinessType,
    CatalogCategory,
    Id,
    InsuranceType,
    Money,
    Name,
    Ownership,
    Quantity,
    RealNameMethod,
    Text,
    UnitPrice,
)
from events.contracts import DLQ_SIZE, DLQ_VALUE_MAX, dead_letter_value
from events.prescription import (
    PACK_UNITS_MAX,
    DispensedLine,
    DispenseWithdrawn,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionItem,
    PrescriptionRejected,
    SplitPack,
)
from events.registries import PharmacyDesignated, PharmacyDrugsListed
from services.api import create_app
from services.api import models as m
from services.api.routes.registry import BODY_MODELS as REGISTRY_BODY_MODELS
from services.application import commands as c
from services.infra.settings import Settings

# The widest character JSON can produce: a control character is written as \u00XX (6 bytes).
WIDE = "\x01"
KAFKA_MESSAGE_MAX = 1024 * 1024


def _money(value: object, kind: Any = Money) -> Any:
    return TypeAdapter(kind).validate_python(value)


# --- the types ---------------------------------------------------------------------------------------------------


def test_money_stays_within_the_read_models_columns() -> None:
    assert _money(str(MONEY_MAX)) == MONEY_MAX
    assert _money(f"-{MONEY_MAX}") == -MONEY_MAX  # a statement's payable may be negative
    for bad in ("99999999999999.99", str(MONEY_MAX + Decimal("0.01")), "1e30", "NaN", 1.5, "1.234"):
        with pytest.raises(ValidationError):
            _money(bad)
    # numeric(16,2) holds 10**14: ten thousand of the largest amounts still fit one monthly sum
    assert MONEY_MAX * 10_000 < Decimal(10) ** 14


def test_amounts_and_prices_are_never_negative_and_prices_small() -> None:
    assert _money("0.00", Amount) == 0
    with pytest.raises(ValidationError, match="negative"):
        _money("-0.01", Amount)
    assert _money(str(PRICE_MAX), UnitPrice) == PRICE_MAX
    with pytest.raises(ValidationError):
        _money(str(PRICE_MAX + Decimal("0.01")), UnitPrice)
    # the largest prescription's total is still an amount
    assert PRICE_MAX * QUANTITY_MAX * ITEMS_MAX + PRICE_MAX <= MONEY_MAX


def test_quantities_fit_int_columns() -> None:
    adapter = TypeAdapter(Quantity)
    assert adapter.validate_python(QUANTITY_MAX) == QUANTITY_MAX
    for bad in (0, QUANTITY_MAX + 1, 2**31):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
    assert QUANTITY_MAX * ITEMS_MAX < 2**31  # dispensed quantities summed per prescription


@pytest.mark.parametrize(("kind", "length"), [(Id, ID_LENGTH), (Name, NAME_LENGTH), (Text, TEXT_LENGTH)])
def test_texts_have_a_length_and_no_nul(kind: Any, length: int) -> None:
    adapter = TypeAdapter(kind)
    assert adapter.validate_python("x" * length)
    for bad in ("", "x" * (length + 1), "a\x00b"):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_poison_values_from_the_issue_are_refused_by_the_commands() -> None:
    with pytest.raises(ValidationError, match="consultation_fee"):
        c.RecordFollowUpVisit.model_validate({**_visit(), "consultation_fee": "99999999999999.99"})
    with pytest.raises(ValidationError, match="quantity"):
        _item(quantity=2**31)
    with pytest.raises(ValidationError, match="name"):
        _item(name="x" * 1_100_000)
    with pytest.raises(ValidationError, match="reasons"):
        c.RejectPrescription(prescription_id=uuid4(), pharmacist_id="p", reasons=("r",) * (REASONS_MAX + 1))
    too_many = tuple(_line(codes=QUANTITY_MAX, drug=i) for i in range(TRACE_CODES_MAX // QUANTITY_MAX + 1))
    with pytest.raises(ValidationError, match="trace codes"):
        c.DispensePrescription(prescription_id=uuid4(), dispenser_id="ph", lines=too_many)


def test_the_api_bodies_refuse_them_too() -> None:
    body = {k: v for k, v in _visit().items() if k not in ("kind", "hospital_id")}
    with pytest.raises(ValidationError, match="consultation_fee"):
        m.VisitCreate.model_validate({**body, "consultation_fee": "99999999999999.99"})
    with pytest.raises(ValidationError, match="justification"):
        m.PrescriptionCreate(prescription_ref="r", encounter_id=uuid4(), physician_signature="s", items=(_item(),),
                             justification="j" * (LONG_TEXT_LENGTH + 1))


# --- a whole event fits a message --------------------------------------------------------------------------------


def _envelope(version: int = 1) -> dict[str, Any]:
    return {"originator_id": uuid4(), "originator_version": version, "timestamp": datetime.now(UTC),
            "prev_hash": GENESIS_HASH, "business_type": BusinessType.INTERNET}


def _item(**over: Any) -> PrescriptionItem:
    fields: dict[str, Any] = {"drug_code": "X" + "A" * 19, "name": "amlodipine", "spec": "5mg*28", "quantity": 1,
                              "days_supply": 28, "unit_price": "1.00", "category": CatalogCategory.A}
    return PrescriptionItem(**{**fields, **over})


def _line(codes: int, drug: int = 0) -> DispensedLine:
    return DispensedLine(drug_code=f"X{drug:019d}", quantity=QUANTITY_MAX, unit_price=str(PRICE_MAX),
                         price_cap=str(PRICE_MAX), payment_standard=str(PRICE_MAX),
                         split=SplitPack(units=PACK_UNITS_MAX - 1, pack_units=PACK_UNITS_MAX),
                         trace_codes=tuple(f"{drug:04d}{n:016d}" for n in range(codes)))


def _visit() -> dict[str, Any]:
    return {"kind": "record_follow_up_visit", "hospital_id": "H1", "visit_ref": "V1", "physical_institution_id": "I1",
            "institution_ownership": Ownership.PUBLIC, "pooling_region": "220100", "insured_region": "220100",
            "insurance_type": InsuranceType.EMPLOYEE, "patient": {"national_id": "220102198001010011", "name": "n"},
            "physician_id": "D1", "physician_signature": "sig", "diagnosis_code": "I10", "diagnosis_name": "hypertension",
            "original_diagnosis_code": "I10", "original_diagnosis_date": date(2026, 1, 1),
            "original_institution_id": "I1", "verification_method": RealNameMethod.E_VOUCHER,
            "consultation_fee": "20.00"}


def _largest_events() -> dict[str, Any]:
    wide = {n: WIDE * NAME_LENGTH for n in ("name", "spec")}
    items = tuple(_item(drug_code=f"X{i:019d}", quantity=QUANTITY_MAX, unit_price=str(PRICE_MAX), **wide)
                  for i in range(ITEMS_MAX))
    per_line = TRACE_CODES_MAX // ITEMS_MAX
    lines = tuple(_line(codes=per_line, drug=i) for i in range(ITEMS_MAX))
    text, name, ident = WIDE * TEXT_LENGTH, WIDE * NAME_LENGTH, WIDE * ID_LENGTH
    issued = PrescriptionIssued(
        **_envelope(), encounter_id=uuid4(), hospital_id=ident, physical_institution_id=ident,
        institution_ownership=Ownership.PUBLIC, pooling_region="220100", insured_region="220100",
        insurance_type=InsuranceType.EMPLOYEE, patient_ref=ident, patient_sealed="s" * SEALED_LENGTH,
        physician_id=ident, physician_signature=text, diagnosis_code=ident, diagnosis_name=name, items=items,
        valid_until=datetime.now(UTC) + timedelta(days=3), justification=WIDE * LONG_TEXT_LENGTH,
        preferred_pharmacy_id=ident)
    return {
        "PrescriptionIssued": issued,
        "PrescriptionDispensed": PrescriptionDispensed(**_envelope(), dispenser_id=ident, dispense_no=2**31 - 1,
                                                       lines=lines, complete=True),
        "DispenseWithdrawn": DispenseWithdrawn(**_envelope(), dispense_no=1, reason=text,
                                               trace_codes=tuple(f"{n:020d}" for n in range(TRACE_CODES_MAX))),
        "PrescriptionRejected": PrescriptionRejected(**_envelope(), pharmacist_id=ident,
                                                     reasons=(text,) * REASONS_MAX),
        "PharmacyDesignated": PharmacyDesignated(
            originator_id=uuid4(), originator_version=1, timestamp=datetime.now(UTC), prev_hash=GENESIS_HASH,
            pharmacy_id=ident, name=name, pooling_region="220100", agreement_no=ident, payee_id=ident,
            changed_by=ident, effective_from=date(2026, 1, 1),
            drug_codes=tuple(f"X{n:019d}" for n in range(DRUG_CODES_MAX))),
        "PharmacyDrugsListed": PharmacyDrugsListed(
            originator_id=uuid4(), originator_version=2, timestamp=datetime.now(UTC), prev_hash="a" * 64,
            changed_by=ident, effective_from=date(2026, 1, 1),
            drug_codes=tuple(f"X{n:019d}" for n in range(DRUG_CODES_MAX))),
    }


def test_the_largest_valid_events_fit_well_under_a_kafka_message() -> None:
    sizes = {name: len(to_json(event)) for name, event in _largest_events().items()}
    assert max(sizes.values()) <= EVENT_SIZE_MAX, sizes
    assert EVENT_SIZE_MAX <= KAFKA_MESSAGE_MAX // 2


def test_a_dead_letter_too_large_to_carry_becomes_a_reference() -> None:
    small, extra = dead_letter_value(b"{}", error="bad", source="t/0/1")
    assert (small, extra) == (b"{}", [])
    value = b"[" * (DLQ_VALUE_MAX + 1)
    carried, extra = dead_letter_value(value, error="RecursionError", source="rx.inbound.h/0/7")
    reference = json.loads(carried)
    assert reference["size"] == len(value) and reference["source"] == "rx.inbound.h/0/7"
    assert len(carried) < 4096 and extra == [(DLQ_SIZE, str(len(value)).encode())]


# --- the OpenAPI declares the limits -------------------------------------------------------------------------------


def _unbounded(schema: dict[str, Any], defs: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _unbounded(defs[name], defs, f"{where}", seen | {name})
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _unbounded(sub, defs, where, seen)
    kind = schema.get("type")
    if kind == "string" and not ({"enum", "const", "maxLength"} & schema.keys()) \
            and schema.get("format") not in ("uuid", "date", "date-time"):
        found.append(f"{where}: string without maxLength")
    if kind in ("integer", "number") and "maximum" not in schema and "enum" not in schema:
        found.append(f"{where}: {kind} without maximum")
    if kind == "array":
        if "maxItems" not in schema:
            found.append(f"{where}: array without maxItems")
        for sub in [schema.get("items", {}), *schema.get("prefixItems", [])]:
            found += _unbounded(sub, defs, f"{where}[]", seen)
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        found.append(f"{where}: object with free-form properties")
    for name, sub in schema.get("properties", {}).items():
        found += _unbounded(sub, defs, f"{where}.{name}", seen)
    return found


def test_every_request_body_field_declares_its_limit() -> None:
    doc = create_app(Settings(database_url="postgresql://nobody@localhost/none")).openapi()
    defs = doc["components"]["schemas"]
    bodies = {content["schema"]["$ref"].rsplit("/", 1)[-1]
              for ops in doc["paths"].values() for op in ops.values() if isinstance(op, dict)
              for content in op.get("requestBody", {}).get("content", {}).values()}
    assert set(bodies) == {body.__name__ for body in (*m.BODIES, *REGISTRY_BODY_MODELS)}
    problems = [p for body in sorted(bodies) for p in _unbounded(defs[body], defs, body, set())]
    assert problems == []


def test_every_parameter_declares_its_limit() -> None:
    doc = create_app(Settings(database_url="postgresql://nobody@localhost/none")).openapi()
    problems = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []) if isinstance(op, dict) else ():
                options = param["schema"].get("anyOf", [param["schema"]])
                for s in options:
                    if s.get("type") == "string" and not ({"maxLength", "pattern", "enum", "format"} & s.keys()):
                        problems.append(f"{method} {path} {param['name']}")
                    if s.get("type") == "integer" and "maximum" not in s:
                        problems.append(f"{method} {path} {param['name']}")
    assert problems == []


def test_every_inbound_command_in_the_asyncapi_declares_its_limits() -> None:
    from services.adapters.asyncapi import asyncapi_document

    defs = asyncapi_document()["components"]["schemas"]
    commands = [name for name in defs if name in {cls.__name__ for cls in _command_classes()}]
    assert len(commands) == len(_command_classes())
    problems = [p for name in sorted(commands) for p in _unbounded(defs[name], defs, name, set())]
    assert problems == []


def _command_classes() -> list[type[c.Command]]:
    return [cls for cls in vars(c).values()
            if isinstance(cls, type) and issubclass(cls, c.Command) and "kind" in cls.model_fields]
