"""Reference data: versioned, validated, deterministic, marked illustrative."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from events.base import CatalogCategory
from services.reference import ReferenceNotFound, load_reference, reference_versions
from services.reference.generate import DATA, generate


def test_default_reference_loads_with_its_version() -> None:
    ref = load_reference()
    assert ref.version in reference_versions() and ref.illustrative
    assert load_reference(ref.version) is ref
    assert 200 <= len(ref.drugs) <= 1000
    assert {r.code for r in ref.regions} >= {"220100", "532300", "370100"}


def test_catalog_categories_and_unknown_drugs_are_out_of_catalog() -> None:
    ref = load_reference()
    assert {d.category for d in ref.drugs} == set(CatalogCategory)
    assert ref.category("XZ99ZZZ999Z999999999") is CatalogCategory.NONE
    drug = ref.drugs[0]
    assert ref.drug(drug.code) == drug and len(drug.code) == 20


def test_price_cap_prefers_the_institutions_own_cap() -> None:
    ref = load_reference()
    local = next(c for c in ref.price_caps if c.institution_id != "*")
    default = next(c for c in ref.price_caps if c.drug_code == local.drug_code and c.institution_id == "*")
    assert ref.price_cap(local.drug_code, local.institution_id) == local.cap
    assert ref.price_cap(local.drug_code, "NO-SUCH-INSTITUTION") == default.cap
    assert ref.price_cap("XZ99ZZZ999Z999999999", "P-CC-001") is None


def test_regions_and_policies() -> None:
    ref = load_reference()
    assert ref.region("370100").pharmacy_payee == "delivery_enterprise"
    assert ref.region("220100").deposit_rate == Decimal("0.05")
    with pytest.raises(ReferenceNotFound):
        ref.region("999999")
    assert ref.policy("532300").region_code == "532300"


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ReferenceNotFound):
        load_reference("1999.1")


def test_shipped_files_match_the_generator() -> None:
    version = load_reference().version
    for name, document in generate(version).items():
        assert json.loads((DATA / version / name).read_text(encoding="utf-8")) == document
