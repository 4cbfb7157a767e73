"""Base types shared by every event stream: envelope, money, time, hashing, upcasting.

金额一律为人民币元，两位小数（Decimal）；时间一律为带时区的 UTC。
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

CENT = Decimal("0.01")
GENESIS_HASH = "0" * 64


def _parse_decimal(value: object) -> Decimal | None:
    accepted = isinstance(value, Decimal | int | str) and not isinstance(value, bool)
    try:
        return Decimal(value) if accepted else None  # type: ignore[arg-type]
    except InvalidOperation:
        return None


# --- limits: what the storage and the broker can carry (issue 12: bounded input everywhere) -------------------
# The read models keep money in numeric(16,2) columns (at most 99,999,999,999,999.99) and sum a month of a party's
# events into one row; quantities land in int columns (2**31 - 1) and are summed per prescription; every event is
# one Kafka message (the broker refuses more than 1 MB). The limits below keep any one value, and any valid
# command's events, far inside those.

MONEY_DIGITS = 10
"""Digits before the point of any amount: |amount| <= 9,999,999,999.99 (10,000 such events fill a numeric(16,2) sum)."""
MONEY_MAX = Decimal(10) ** MONEY_DIGITS - CENT
PRICE_DIGITS = 5
"""Digits before the point of a unit price (per box): <= 99,999.99."""
PRICE_MAX = Decimal(10) ** PRICE_DIGITS - CENT
QUANTITY_MAX = 999
"""Boxes on one prescription line or one dispensed line."""
DAYS_MAX = 999
"""Days of supply of one line (R4 refuses long ones; this only bounds the number)."""
ITEMS_MAX = 50
"""Items of one prescription, lines of one dispense, drug codes of a first-visit prescription."""
TRACE_CODES_MAX = 5_000
"""Trace codes scanned in one dispense (each line at most its quantity, R8)."""
DRUG_CODES_MAX = 5_000
"""Drug codes a pharmacy declares it carries."""
REASONS_MAX = 20
"""Reasons of one rejection."""
VERSION_MAX = 2**31 - 1
"""Aggregate versions and dispense numbers are stored in int columns."""
ID_LENGTH = 200
"""Also the length of a command_id, which becomes a settlement_ref."""
NAME_LENGTH = 200
TEXT_LENGTH = 500
LONG_TEXT_LENGTH = 2_000
SEALED_LENGTH = 16_384
EVENT_SIZE_MAX = 512 * 1024
"""Bytes of one event's JSON: half the broker's default message size, so headers and framing always fit. A valid
command's events stay far below it (tests/unit/test_bounds.py measures the largest); the application refuses
anything above it before saving, belt and braces."""


def to_money(value: object) -> Decimal:
    """Decimal yuan with exactly two places; floats are refused so binary rounding never enters."""
    amount = _parse_decimal(value)
    if amount is None or not amount.is_finite():
        raise ValueError(f"not a money amount (string, int or Decimal; never float): {value!r}")
    if abs(amount) > MONEY_MAX:
        raise ValueError(f"money amount out of range (at most {MONEY_MAX} in absolute value)")
    try:
        quantized = amount.quantize(CENT)
    except InvalidOperation as exc:
        raise ValueError(f"money amount out of range: {value!r}") from exc
    if quantized != amount:
        raise ValueError(f"money has more than 2 decimal places: {value!r}")
    return quantized


def to_amount(value: object) -> Decimal:
    """``to_money``, and never negative."""
    amount = to_money(value)
    if amount < 0:
        raise ValueError("amount must not be negative")
    return amount


def to_price(value: object) -> Decimal:
    """``to_amount``, at most PRICE_MAX."""
    amount = to_amount(value)
    if amount > PRICE_MAX:
        raise ValueError(f"unit price out of range (at most {PRICE_MAX})")
    return amount


_MONEY_TEXT = re.compile(r"^-?\d+\.\d{2}$")


def _money_input(parse: Callable[[object], Decimal]) -> Callable[[object], Decimal]:
    """The field validator of a money type: what an outsider sends is a string in the declared pattern (exactly two
    decimal places; no exponent such as "1e1", no "+", spaces or bare integers) or, from Python, a Decimal."""

    def validate(value: object) -> Decimal:
        if isinstance(value, str):
            if not _MONEY_TEXT.fullmatch(value):
                raise ValueError(f"money is a string with exactly 2 decimal places, like \"12.50\": {value[:40]!r}")
        elif not isinstance(value, Decimal):
            raise ValueError("money is a string with exactly 2 decimal places, like \"12.50\" (not a JSON number)")
        return parse(value)

    return validate


_SERIALIZE_MONEY = PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json")

Money = Annotated[
    Decimal,
    PlainValidator(_money_input(to_money)),
    _SERIALIZE_MONEY,
    WithJsonSchema({
        "type": "string", "pattern": rf"^-?\d{{1,{MONEY_DIGITS}}}\.\d{{2}}$", "maxLength": MONEY_DIGITS + 4,
        "description": f"yuan, exactly 2 decimal places; |amount| <= {MONEY_MAX}",
    }),
]
"""An amount in yuan that may be negative (a statement's payable); |amount| <= MONEY_MAX."""

Amount = Annotated[
    Decimal,
    PlainValidator(_money_input(to_amount)),
    _SERIALIZE_MONEY,
    WithJsonSchema({
        "type": "string", "pattern": rf"^\d{{1,{MONEY_DIGITS}}}\.\d{{2}}$", "maxLength": MONEY_DIGITS + 3,
        "description": f"yuan, exactly 2 decimal places, 0.00 to {MONEY_MAX}",
    }),
]
"""A fee, an amount paid, refused or clawed back: 0 <= amount <= MONEY_MAX."""

UnitPrice = Annotated[
    Decimal,
    PlainValidator(_money_input(to_price)),
    _SERIALIZE_MONEY,
    WithJsonSchema({
        "type": "string", "pattern": rf"^\d{{1,{PRICE_DIGITS}}}\.\d{{2}}$", "maxLength": PRICE_DIGITS + 3,
        "description": f"yuan per box, exactly 2 decimal places, 0.00 to {PRICE_MAX}",
    }),
]
"""A price per box: 0 <= price <= PRICE_MAX (so a whole prescription stays within MONEY_MAX)."""
Fee = UnitPrice
"""A fee charged once (a consultation, a delivery): 0 <= fee <= PRICE_MAX."""


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    return text


_NO_NUL = AfterValidator(_no_nul)
Id = Annotated[str, Field(min_length=1, max_length=ID_LENGTH), _NO_NUL]
"""An identifier or a reference (a hospital, a physician, a visit number, an agreement number, a code)."""
Name = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH), _NO_NUL]
"""A name or a short label (a drug's name or spec, a diagnosis, a person's name)."""
Text = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTH), _NO_NUL]
"""A reason, a signature, a sentence."""
LongText = Annotated[str, Field(min_length=1, max_length=LONG_TEXT_LENGTH), _NO_NUL]
"""A justification or a note."""
Sealed = Annotated[str, Field(max_length=SEALED_LENGTH)]
"""Personal data sealed by the patient vault (written by the server)."""
Region = Annotated[str, Field(pattern=r"^\d{6}$", min_length=6, max_length=6)]
"""A six-digit administrative region code (a pooling region)."""
Quantity = Annotated[int, Field(ge=1, le=QUANTITY_MAX)]
"""Boxes (packs) on one line."""
Days = Annotated[int, Field(ge=1, le=DAYS_MAX)]
"""Days of supply of one line."""
Version = Annotated[int, Field(ge=1, le=VERSION_MAX)]
"""An aggregate version or a dispense number."""
ZERO = Decimal("0.00")


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_require_utc)]

DrugCode = Annotated[
    str,
    Field(pattern=r"^[XZ][A-Z0-9]{19}$", min_length=20, max_length=20,
          description="national medical-insurance drug code (20 chars)"),
]
def _trace_code(value: str) -> str:
    if len(value) != 20 or not value.isascii() or not value.isdigit():
        raise ValueError(f"R8: a drug traceability code is the 20-digit national code (药品追溯码): {value[:40]!r}")
    return value


TraceCodeStr = Annotated[
    str,
    Field(max_length=40, json_schema_extra={"pattern": r"^\d{20}$", "minLength": 20, "maxLength": 20},
          description="20-digit drug traceability code (R8)"),
    AfterValidator(_trace_code),
]
PatientRef = Annotated[
    str, Field(min_length=8, max_length=ID_LENGTH, description="keyed pseudonym of the patient, never the identity")
]


class BusinessType(StrEnum):
    """R14: 互联网+（internet）/ 线下（offline）/ 异地（off_site）业务始终可区分。"""

    INTERNET = "internet"
    OFFLINE = "offline"
    OFF_SITE = "off_site"


class InsuranceType(StrEnum):
    """职工（employee）/ 居民（resident）。"""

    EMPLOYEE = "employee"
    RESIDENT = "resident"


class CatalogCategory(StrEnum):
    """医保目录类别：甲类 A、乙类 B、丙类 C、目录外 NONE。"""

    A = "A"
    B = "B"
    C = "C"
    NONE = "NONE"


class RealNameMethod(StrEnum):
    """实名实人核验方式：医保电子凭证（e_voucher）、人脸识别（face_recognition）。"""

    E_VOUCHER = "e_voucher"
    FACE_RECOGNITION = "face_recognition"


class Ownership(StrEnum):
    """公立 / 非公立（R7：非公立机构超限价部分可由个人账户支付）。"""

    PUBLIC = "public"
    NON_PUBLIC = "non_public"


class Envelope(BaseModel):
    """What eventsourcing needs to store an event, plus the schema version used for upcasting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    originator_id: UUID
    originator_version: int = Field(ge=1)
    timestamp: UTCDateTime
    schema_version: int = 1

    _stored_form: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _current_schema_only(self) -> Envelope:
        current = current_schema_version(type(self))
        if self.schema_version != current:
            raise ValueError(
                f"{type(self).__name__} schema_version {self.schema_version} is not current ({current}); "
                "load stored data through from_json so it is upcast"
            )
        return self


def current_schema_version(cls: type[Envelope]) -> int:
    return int(cls.model_fields["schema_version"].default)


class DomainEvent(Envelope):
    """An event in a hash-chained aggregate stream."""

    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class Snapshot(Envelope):
    """State of an aggregate at a version, so a long stream loads from here (not hash-chained itself).

    ``take`` follows eventsourcing's snapshot protocol: the aggregate supplies
    ``snapshot_state()`` (JSON-able) and ``head_hash``.
    """

    aggregate_type: str
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    state: dict[str, Any]

    @classmethod
    def take(cls, aggregate: Any) -> Snapshot:
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=datetime.now(UTC),
            aggregate_type=type(aggregate).__name__,
            head_hash=aggregate.head_hash,
            state=aggregate.snapshot_state(),
        )


# --- upcasting -------------------------------------------------------------------------------------

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UpcastError(ValueError):
    pass


def register_upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the step ``from_version`` → ``from_version + 1`` for one event type."""

    def decorator(func: Upcaster) -> Upcaster:
        key = (type_name, from_version)
        if key in _UPCASTERS:
            raise UpcastError(f"upcaster for {type_name} v{from_version} already registered")
        _UPCASTERS[key] = func
        return func

    return decorator


_CHAIN_FIELDS = ("originator_id", "originator_version", "prev_hash", "hash")


def upcast(type_name: str, version: int, data: Mapping[str, Any]) -> dict[str, Any]:
    """Run the registered chain from ``version`` as far as it goes; envelope and chain fields never change."""
    out = dict(data)
    while (step := _UPCASTERS.get((type_name, version))) is not None:
        out = step(dict(out))
        for name in _CHAIN_FIELDS:
            if name in data and out.get(name) != data[name]:
                raise UpcastError(f"upcaster {type_name} v{version} changed {name}")
        version += 1
        out["schema_version"] = version
    return out


# --- canonical encoding and the hash chain ----------------------------------------------------------


def _canonical(type_name: str, fields: Mapping[str, Any]) -> bytes:
    payload = {"event_type": type_name, **{k: v for k, v in fields.items() if k != "hash"}}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_bytes(event: Envelope) -> bytes:
    """The bytes an event's hash covers: its JSON form without ``hash``, keys sorted, type name included.

    An event loaded from an older schema version is hashed in the form it was written in, as long as
    it is still exactly what upcasting that form yields (so tampering after load is still caught).
    """
    type_name = type(event).__name__
    current = event.model_dump(mode="json")
    stored = event._stored_form
    if stored is not None:
        replayed = type(event).model_validate(upcast(type_name, int(stored.get("schema_version", 1)), stored))
        if replayed.model_dump(mode="json") == current:
            return _canonical(type_name, stored)
    return _canonical(type_name, current)


def event_hash(event: Envelope) -> str:
    return hashlib.sha256(canonical_bytes(event)).hexdigest()
