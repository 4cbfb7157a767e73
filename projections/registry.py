"""The one list of projections. The runner (``rxtrail run projections``), replay, the CLI and the benches read it;
adding a projection is one line in ``PROJECTIONS`` (see ARCHITECTURE.md, "A new projection").

Each entry names the projection, how to build it from the projection options, the PostgreSQL schema it owns
and the consumer group it reads ``rx.events`` as.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from projections.base import GROUP_PREFIX, Projection
from projections.fraud import Fraud
from projections.hospital_settlement import HospitalSettlement
from projections.pharmacy_settlement import PharmacySettlement
from projections.traceability import Traceability


class ProjectionOptions(Protocol):
    """What projections may be configured with (the projections section of the settings satisfies it). None today:
    the deposit rate and the pharmacy-side payee are region policy (``services/reference/policies``)."""


@dataclass(frozen=True)
class Defaults:
    """The options when none are given."""


@dataclass(frozen=True)
class Registered:
    name: str
    factory: Callable[[ProjectionOptions], Projection]

    @property
    def schema(self) -> str:
        """The PostgreSQL schema the projection owns."""
        return self.name

    def group_id(self, prefix: str = GROUP_PREFIX) -> str:
        """The consumer group it reads ``rx.events`` as."""
        return f"{prefix}.{self.name}"

    def build(self, options: ProjectionOptions | None = None) -> Projection:
        return self.factory(options if options is not None else Defaults())


PROJECTIONS: tuple[Registered, ...] = (
    Registered("hospital_settlement", lambda o: HospitalSettlement()),  # deposit: region policy (statements)
    Registered("pharmacy_settlement", lambda o: PharmacySettlement()),  # payee: on each settlement event
    Registered("traceability", lambda o: Traceability()),
    Registered("fraud", lambda o: Fraud()),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)
_BY_NAME = {p.name: p for p in PROJECTIONS}


def get(name: str) -> Registered:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown projection {name!r}; choose one of {', '.join(NAMES)}") from None


def resolve(name: str) -> list[str]:
    """``all`` → every projection; otherwise the one name, checked."""
    if name == "all":
        return list(NAMES)
    if name not in _BY_NAME:
        raise ValueError(f"unknown projection {name!r}; choose one of {', '.join(NAMES)} or all")
    return [name]


def build(name: str, options: ProjectionOptions | None = None) -> Projection:
    """A fresh projection object (``options``: defaults when None)."""
    return get(name).build(options)


__all__ = ["GROUP_PREFIX", "NAMES", "PROJECTIONS", "Defaults", "ProjectionOptions", "Registered", "build", "get",
           "resolve"]
