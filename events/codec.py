"""Type registry, JSON (de)serialisation with upcasting, and JSON Schema export."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from events.base import Envelope, Snapshot, current_schema_version, upcast
from events.encounter import ENCOUNTER_EVENTS
from events.prescription import PRESCRIPTION_EVENTS
from events.registries import REGISTRY_EVENTS
from events.statement import STATEMENT_EVENTS
from events.supply import SUPPLY_EVENTS
from events.trace_code import TRACE_CODE_EVENTS


class UnknownEventType(KeyError):
    pass


def _registry() -> dict[str, type[Envelope]]:
    types: dict[str, type[Envelope]] = {}
    classes: tuple[type[Envelope], ...] = (
        *ENCOUNTER_EVENTS,
        *PRESCRIPTION_EVENTS,
        *TRACE_CODE_EVENTS,
        *REGISTRY_EVENTS,
        *STATEMENT_EVENTS,
        *SUPPLY_EVENTS,
        Snapshot,
    )
    for cls in classes:
        if cls.__name__ in types:
            raise RuntimeError(f"duplicate event type name {cls.__name__}")
        types[cls.__name__] = cls
    return types


EVENT_TYPES: dict[str, type[Envelope]] = _registry()


def type_name(event: Envelope) -> str:
    return type(event).__name__


def to_json(event: Envelope) -> bytes:
    return json.dumps(
        event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def from_json(name: str, data: bytes | str | Mapping[str, Any]) -> Envelope:
    """Decode a stored event of type ``name``, upcasting older schema versions first."""
    try:
        cls = EVENT_TYPES[name]
    except KeyError:
        raise UnknownEventType(name) from None
    raw: dict[str, Any] = dict(json.loads(data)) if isinstance(data, bytes | str) else dict(data)
    version = int(raw.get("schema_version", 1))
    if version > current_schema_version(cls):
        raise ValueError(f"{name} schema_version {version} is newer than this code knows")
    upcasted = upcast(name, version, raw)
    event = cls.model_validate(upcasted)
    if version != current_schema_version(cls):
        event._stored_form = raw
    return event


def json_schema(cls: type[Envelope]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="serialization")
    version = current_schema_version(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:rxtrail:event:{cls.__name__}:v{version}"
    schema["x-schema-version"] = version
    return schema


def write_schemas(out_dir: str | Path) -> list[Path]:
    """Write ``<EventType>.v<N>.json`` for every event type; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, cls in sorted(EVENT_TYPES.items()):
        path = out / f"{name}.v{current_schema_version(cls)}.json"
        path.write_text(json.dumps(json_schema(cls), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        written.append(path)
    return written
