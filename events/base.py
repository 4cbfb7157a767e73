"""Base types shared by every event stream: envelope, money, time, hashing, upcasting.

金额一律为人民币元，两位小数（Decimal）；时间一律为带时区的 UTC。
"""

from __future__ import annotations

import hashlib
import json
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


def to_money(value: object) -> Decimal:
    """Decimal yuan with exactly two places; floats are refused so binary rounding never enters."""
    amount = _parse_decimal(value)
    if amount is None or not amount.is_finite():
        raise ValueError(f"not a money amount (string, int or Decimal; never float): {value!r}")
    try:
        quantized = amount.quantize(CENT)
    except InvalidOperation as exc:
        raise ValueError(f"money amount out of range: {value!r}") from exc
    if quantized != amount:
        raise ValueError(f"money has more than 2 decimal places: {value!r}")
    return quantized


Money = Annotated[
    Decimal,
    PlainValidator(to_money),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": r"^-?\d+\.\d{2}$", "description": "yuan, exactly 2 decimal places"}
    ),
]
ZERO = Decimal("0.00")


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_require_utc)]

DrugCode = Annotated[
    str,
    Field(pattern=r"^[XZ][A-Z0-9]{19}$", description="national medical-insurance drug code (20 chars)"),
]
TraceCodeStr = Annotated[str, Field(pattern=r"^\d{20}$", description="20-digit drug traceability code")]
PatientRef = Annotated[
    str, Field(min_length=8, max_length=128, description="keyed pseudonym of the patient, never the identity")
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
