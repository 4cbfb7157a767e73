"""Versioned reference data: drug catalog, price caps, pooling regions (ILLUSTRATIVE defaults, see README.md).

Region settlement terms (ratios, deductibles, disease scope) live in ``services.reference.policies``;
``Reference.policy(region)`` reaches them.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from events.base import CatalogCategory, DrugCode, Money
from services.reference.policies import RegionPolicy, load_policy

__all__ = [
    "Drug",
    "PharmacyPayee",
    "PriceCap",
    "Reference",
    "ReferenceNotFound",
    "Region",
    "load_reference",
    "reference_versions",
]

ANY_INSTITUTION = "*"


class ReferenceNotFound(LookupError):
    pass


class Drug(BaseModel):
    """医保药品目录条目；category: A 甲类 / B 乙类 / C 丙类 / NONE 目录外。"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: DrugCode
    name: str = Field(min_length=1)
    spec: str = Field(min_length=1)
    form: str = Field(min_length=1)
    atc: str = Field(pattern=r"^[A-Z]\d{2}[A-Z]{2}$")
    category: CatalogCategory


class PriceCap(BaseModel):
    """R7 限价：实体医疗机构价格 / 集中采购挂网价；institution_id ``*`` 为默认。"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drug_code: DrugCode
    institution_id: str = Field(min_length=1)
    cap: Money


class PharmacyPayee(StrEnum):
    """Who the agency pays for routed-prescription drugs (Jinan: the supply/delivery enterprise, 004 §六)."""

    PHARMACY = "pharmacy"
    DELIVERY_ENTERPRISE = "delivery_enterprise"


class Region(BaseModel):
    """统筹区。deposit_rate: 医院月度结算预留的履约保证金比例（003 art. 20）。"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^\d{6}$")
    name: str = Field(min_length=1)
    name_zh: str = Field(min_length=1)
    province: str = Field(min_length=1)
    deposit_rate: Decimal = Field(ge=0, le=1)
    pharmacy_payee: PharmacyPayee
    sources: tuple[str, ...] = ()


class Reference(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(pattern=r"^\d{4}\.\d+$")
    illustrative: bool
    drugs: tuple[Drug, ...]
    price_caps: tuple[PriceCap, ...]
    regions: tuple[Region, ...]

    _drugs: dict[str, Drug] = PrivateAttr(default_factory=dict)
    _caps: dict[tuple[str, str], Decimal] = PrivateAttr(default_factory=dict)
    _regions: dict[str, Region] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index(self) -> Reference:
        self._drugs = {d.code: d for d in self.drugs}
        if len(self._drugs) != len(self.drugs):
            raise ValueError("duplicate drug code")
        self._caps = {(c.drug_code, c.institution_id): c.cap for c in self.price_caps}
        unknown = {code for code, _ in self._caps} - set(self._drugs)
        if unknown:
            raise ValueError(f"price caps for unknown drugs: {sorted(unknown)[:3]}")
        self._regions = {r.code: r for r in self.regions}
        return self

    def drug(self, code: str) -> Drug | None:
        return self._drugs.get(code)

    def category(self, code: str) -> CatalogCategory:
        """Drugs not in the catalog are out-of-catalog (NONE): self-pay under R10."""
        found = self._drugs.get(code)
        return found.category if found else CatalogCategory.NONE

    def price_cap(self, drug_code: str, institution_id: str) -> Decimal | None:
        """The institution's own cap if it has one, else the default cap, else None (no cap known)."""
        return self._caps.get((drug_code, institution_id), self._caps.get((drug_code, ANY_INSTITUTION)))

    def region(self, code: str) -> Region:
        try:
            return self._regions[code]
        except KeyError:
            raise ReferenceNotFound(f"region {code} not in reference {self.version}") from None

    def policy(self, region_code: str, version: str | None = None) -> RegionPolicy:
        self.region(region_code)
        return load_policy(region_code, version)


def _read(path: str) -> Any:
    resource = resources.files(__name__).joinpath("data", *path.split("/"))
    if not resource.is_file():
        raise ReferenceNotFound(f"reference file {path} missing")
    return json.loads(resource.read_text(encoding="utf-8"))


def reference_versions() -> tuple[str, ...]:
    return tuple(_read("index.json")["versions"])


def load_reference(version: str | None = None) -> Reference:
    """Load one version of the reference data (the index's default when ``version`` is None); cached."""
    return _load(version or _read("index.json")["default"])


@cache
def _load(chosen: str) -> Reference:
    if chosen not in reference_versions():
        raise ReferenceNotFound(f"reference version {chosen} unknown; have {reference_versions()}")
    documents = {name: _read(f"{chosen}/{name}.json") for name in ("drugs", "price_caps", "regions")}
    for name, document in documents.items():
        if document["version"] != chosen:
            raise ValueError(f"{chosen}/{name}.json declares version {document['version']}")
    return Reference(
        version=chosen,
        illustrative=all(d["illustrative"] for d in documents.values()),
        drugs=documents["drugs"]["drugs"],
        price_caps=documents["price_caps"]["price_caps"],
        regions=documents["regions"]["regions"],
    )
