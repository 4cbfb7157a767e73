"""The shipped region policies load, validate and are marked ILLUSTRATIVE; the loader picks versions."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from events.base import InsuranceType
from services.reference.policies import (
    InstitutionLevel,
    PolicyNotFound,
    RegionPolicy,
    available_regions,
    load_policy,
    policy_versions,
)

POOLING_REGIONS = {"220100": "长春市", "370100": "济南市", "532300": "楚雄彝族自治州"}


def shipped(region: str) -> dict[str, Any]:
    text = (resources.files("services.reference.policies") / f"{region}.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def test_one_file_per_pooling_region() -> None:
    assert set(available_regions()) == set(POOLING_REGIONS)


@pytest.mark.parametrize("region", sorted(POOLING_REGIONS))
def test_shipped_policy_is_complete_and_illustrative(region: str) -> None:
    policy = load_policy(region)
    assert (policy.region_code, policy.name) == (region, POOLING_REGIONS[region])
    assert policy.version == "2026.1" and policy.effective_from == date(2026, 1, 1)
    assert policy.illustrative and "ILLUSTRATIVE" in policy.note
    assert policy.terms(InsuranceType.EMPLOYEE).personal_account is not None
    assert policy.terms(InsuranceType.RESIDENT).personal_account is None
    assert (
        policy.employee.personal_account is not None and not policy.employee.personal_account.out_of_catalog
    )
    assert set(policy.consultation_fee) == set(InstitutionLevel)
    assert policy.disease_scope.covers("E11.900") and policy.disease_scope.covers("i10")
    assert not policy.disease_scope.covers("K35.800")


def test_readme_documents_every_region() -> None:
    readme = (resources.files("services.reference.policies") / "README.md").read_text(encoding="utf-8")
    assert "ILLUSTRATIVE" in readme
    for region in POOLING_REGIONS:
        assert region in readme
        employee = load_policy(region).employee
        assert str(employee.deductible) in readme and str(employee.annual_fund_cap) in readme


def test_version_selection() -> None:
    assert load_policy("370100", "2026.1") is load_policy("370100")
    assert load_policy("370100", as_of=date(2026, 6, 1)).version == "2026.1"
    with pytest.raises(PolicyNotFound):
        load_policy("370100", "1999.1")
    with pytest.raises(PolicyNotFound):
        load_policy("370100", as_of=date(2025, 12, 31))
    with pytest.raises(PolicyNotFound):
        load_policy("110000")
    assert policy_versions("370100")[-1] is load_policy("370100")


def _entry(region: str = "370100", **changes: Any) -> dict[str, Any]:
    document = shipped(region)
    entry: dict[str, Any] = {
        "region_code": document["region_code"],
        "name": document["name"],
        **document["versions"][0],
    }
    for path, value in changes.items():
        target = entry
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return entry


@pytest.mark.parametrize(
    "changes",
    [
        {"employee__deductible": "-1.00"},
        {"employee__fund_ratio": "1.10"},
        {"employee__fund_ratio": 0.85},
        {"employee__annual_fund_cap": "100.001"},
        {"resident__personal_account": {}},
        {"employee__personal_account": None},
        {"consultation_fee": {"tertiary": "12.00"}},
        {"version": "v1"},
    ],
    ids=[
        "negative",
        "ratio>1",
        "float-ratio",
        "3-places",
        "resident-account",
        "no-employee-account",
        "missing-level",
        "bad-version",
    ],
)
def test_bad_policies_are_refused(changes: dict[str, Any]) -> None:
    assert RegionPolicy.model_validate(_entry())
    with pytest.raises(ValidationError):
        RegionPolicy.model_validate(_entry(**changes))


def test_money_and_ratios_are_exact_decimals() -> None:
    policy = load_policy("220100")
    assert policy.resident.category_b_first_self_pay == Decimal("0.15")
    assert isinstance(policy.employee.deductible, Decimal)
