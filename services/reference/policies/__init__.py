"""Region settlement policy: versioned reference data, one JSON file per pooling region (统筹区).

Per insurance type (employee 职工 / resident 居民) a region sets the deductible (起付线), the annual fund
cap (最高支付限额), the fund ratio and the first self-pay share of category-B (乙类先行自付) drugs; for
employees, what the personal account (个人账户) may pay. It also prices the follow-up consultation as an
ordinary outpatient visit per institution level (002 §三(五); 000 §四(三)) and lists the outpatient
chronic/special diseases (门诊慢特病) the fund pays for online (000 §四(二); 002 §三(四)), which R12
applies by the insured region (003 art. 19).

The shipped figures are ILLUSTRATIVE defaults (see README.md): each version carries ``illustrative``.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator

from events.base import ZERO, InsuranceType, Money

__all__ = [
    "DiseaseScope",
    "InstitutionLevel",
    "InsuranceTerms",
    "PayeeKind",
    "PersonalAccountUse",
    "PolicyNotFound",
    "ProviderTerms",
    "RegionPolicy",
    "ScopedDisease",
    "available_regions",
    "load_policy",
    "policy_versions",
    "provider_terms",
    "provider_terms_versions",
]


def _non_negative(amount: Decimal) -> Decimal:
    if amount < ZERO:
        raise ValueError("amount must not be negative")
    return amount


def _to_ratio(value: object) -> Decimal:
    if isinstance(value, bool | float):
        # pydantic turns only ValueError into a ValidationError naming the field
        raise ValueError("a ratio must be a string, int or Decimal, not a float")
    try:
        ratio = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a ratio: {value!r}") from exc
    if not ratio.is_finite() or not ZERO <= ratio <= 1:
        raise ValueError(f"a ratio must lie in [0, 1]: {value!r}")
    return ratio


NonNegativeMoney = Annotated[Money, AfterValidator(_non_negative)]
Ratio = Annotated[Decimal, PlainValidator(_to_ratio)]


class InstitutionLevel(StrEnum):
    """实体医疗机构级别：三级 / 二级 / 一级 / 未定级 (003 annex 2)."""

    TERTIARY = "tertiary"
    SECONDARY = "secondary"
    PRIMARY = "primary"
    UNRATED = "unrated"


class PersonalAccountUse(BaseModel):
    """What an employee's personal account may pay besides the self-pay shares of covered lines.

    Covered lines' self-pay shares (first self-pay, deductible, the part above the fund ratio) are always
    payable from the account (002 §三(四); 000 §四(三); 001 art. 13). Delivery fees never are (R6).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    excess_over_cap_non_public: bool = Field(
        default=True,
        description="R7 (001 art. 11): at a non-public institution, the part above the price cap",
    )
    out_of_catalog: bool = Field(
        default=False, description="R10: out-of-catalog / category C / off-indication lines (default: no)"
    )


class InsuranceTerms(BaseModel):
    """One insurance type's benefit terms for online outpatient (chronic/special disease) care."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deductible: NonNegativeMoney
    annual_fund_cap: NonNegativeMoney
    fund_ratio: Ratio
    category_b_first_self_pay: Ratio
    personal_account: PersonalAccountUse | None = None


class ScopedDisease(BaseModel):
    """A disease the fund pays for online, by ICD-10 code prefix (``E11`` matches ``E11.900``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[A-Z][0-9A-Z.]{1,9}$")
    name: str = Field(min_length=1)


class DiseaseScope(BaseModel):
    """门诊慢特病 payable online; ``all_diseases`` lifts the restriction (common diseases too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    all_diseases: bool = False
    diseases: tuple[ScopedDisease, ...] = ()

    def covers(self, diagnosis_code: str) -> bool:
        code = diagnosis_code.strip().upper()
        return self.all_diseases or any(code.startswith(disease.code) for disease in self.diseases)


class RegionPolicy(BaseModel):
    """One version of a pooling region's settlement policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region_code: str = Field(pattern=r"^\d{6}$")
    name: str = Field(min_length=1)
    version: str = Field(pattern=r"^\d{4}\.\d+$")
    effective_from: date
    illustrative: bool
    note: str = ""
    sources: tuple[str, ...] = ()
    employee: InsuranceTerms
    resident: InsuranceTerms
    consultation_fee: dict[InstitutionLevel, NonNegativeMoney]
    disease_scope: DiseaseScope

    @model_validator(mode="after")
    def _complete(self) -> RegionPolicy:
        if self.resident.personal_account is not None:
            raise ValueError("residents have no personal account: resident.personal_account must be null")
        if self.employee.personal_account is None:
            raise ValueError("employee.personal_account must be set (use {} for the defaults)")
        missing = set(InstitutionLevel) - set(self.consultation_fee)
        if missing:
            raise ValueError(f"consultation_fee lacks levels {sorted(missing)}")
        return self

    def terms(self, insurance_type: InsuranceType) -> InsuranceTerms:
        return self.employee if insurance_type is InsuranceType.EMPLOYEE else self.resident


class PayeeKind(StrEnum):
    """Who the agency pays for the drugs of prescriptions routed to a retail pharmacy (DOMAIN.md, Settlement)."""

    PHARMACY = "pharmacy"
    DELIVERY_ENTERPRISE = "delivery_enterprise"  # Jinan: the supply/delivery enterprise (004 §六)


class ConsultationTrigger(StrEnum):
    """When a follow-up's consultation fee is settled (R15: only a visit that issued a prescription is paid)."""

    FIRST_PRESCRIPTION_APPROVED = "first_prescription_approved"


class ProviderTerms(BaseModel):
    """How the region's agency pays its providers, in effect from ``effective_from`` until the next entry.

    ``hospital_deposit_rate``: the performance deposit (履约保证金) withheld from the monthly payment to a physical
    institution (003 art. 20, Jinan: 5%; 0 where the region's policy withholds none); pharmacies and delivery
    enterprises are always paid in full. ``pharmacy_payee``: whom the agency pays for circulated drugs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    effective_from: date
    hospital_deposit_rate: Ratio
    pharmacy_payee: PayeeKind
    consultation_settles_on: ConsultationTrigger = ConsultationTrigger.FIRST_PRESCRIPTION_APPROVED
    illustrative: bool
    sources: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _rate(self) -> ProviderTerms:
        if self.hospital_deposit_rate >= 1:
            raise ValueError("hospital_deposit_rate must lie in [0, 1)")
        return self


class _PolicyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    region_code: str = Field(pattern=r"^\d{6}$")
    name: str = Field(min_length=1)
    versions: tuple[dict[str, Any], ...] = Field(min_length=1)
    provider_terms: tuple[ProviderTerms, ...] = Field(min_length=1)


class PolicyNotFound(LookupError):
    """No policy file for the region, or no such version / no version in effect on the date."""

    def __init__(self, region_code: str, detail: str) -> None:
        self.region_code = region_code
        super().__init__(f"policy for region {region_code}: {detail}")


def available_regions() -> tuple[str, ...]:
    root = resources.files(__name__)
    return tuple(sorted(p.name.removesuffix(".json") for p in root.iterdir() if p.name.endswith(".json")))


@cache
def _document(region_code: str) -> _PolicyFile:
    resource = resources.files(__name__) / f"{region_code}.json"
    if not resource.is_file():
        raise PolicyNotFound(region_code, "no policy file")
    document = _PolicyFile.model_validate(json.loads(resource.read_text(encoding="utf-8")))
    if document.region_code != region_code:
        raise ValueError(f"{region_code}.json declares region_code {document.region_code}")
    for earlier, later in pairwise(document.provider_terms):
        if later.effective_from <= earlier.effective_from:
            raise ValueError(f"{region_code}.json: provider_terms must be listed by rising effective_from")
    return document


def provider_terms_versions(region_code: str) -> tuple[ProviderTerms, ...]:
    return _document(region_code).provider_terms


def provider_terms(region_code: str, as_of: date) -> ProviderTerms:
    """The region's provider-payment terms in effect on ``as_of`` (China-time day)."""
    in_effect = [t for t in provider_terms_versions(region_code) if t.effective_from <= as_of]
    if not in_effect:
        raise PolicyNotFound(region_code, f"no provider terms in effect on {as_of}")
    return in_effect[-1]


@cache
def policy_versions(region_code: str) -> tuple[RegionPolicy, ...]:
    """Every version of a region's policy, oldest first (validated: unique versions, rising dates)."""
    document = _document(region_code)
    versions = tuple(
        RegionPolicy.model_validate({"region_code": document.region_code, "name": document.name, **entry})
        for entry in document.versions
    )
    for earlier, later in pairwise(versions):
        if later.effective_from <= earlier.effective_from:
            raise ValueError(f"{region_code}.json: versions must be listed by rising effective_from")
    if len({p.version for p in versions}) != len(versions):
        raise ValueError(f"{region_code}.json: duplicate version")
    return versions


def load_policy(region_code: str, version: str | None = None, *, as_of: date | None = None) -> RegionPolicy:
    """A region's policy: the named ``version``, else the one in effect ``as_of``, else the latest."""
    versions = policy_versions(region_code)
    if version is not None:
        for policy in versions:
            if policy.version == version:
                if as_of is not None and as_of < policy.effective_from:
                    raise PolicyNotFound(region_code, f"version {version} not yet in effect on {as_of}")
                return policy
        raise PolicyNotFound(region_code, f"no version {version}")
    if as_of is None:
        return versions[-1]
    in_effect = [policy for policy in versions if policy.effective_from <= as_of]
    if not in_effect:
        raise PolicyNotFound(region_code, f"no version in effect on {as_of}")
    return in_effect[-1]
