"""Reference data loaded as registry events (issue 13): the drug catalog, payment standards and price caps of each
pooling region, and each region's chronic-disease list become commands of the authority, sent as ``seed:<version>``
(``rxtrail registry seed``; ``rxtrail up`` and the demo on first start).

Idempotent: each command carries the key ``seed:<version>:<what>:<id>``, so a second run is answered with the first
outcomes and records nothing; a fact already registered by the authority (a drug listed by the regulator) is left as
it is and counted as such. The rules read the registry aggregates, never these files (R17); ``Reference`` stays for
tools that show the shipped figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from services.application import commands as c
from services.application.outcomes import Outcome
from services.reference import ANY_INSTITUTION, Reference, load_reference
from services.reference.policies import available_regions, load_policy

CHRONIC_ATC_PREFIXES = tuple("A10 C02 C03 C07 C08 C09 C10 B01 N03 N05 N06 R03".split())
"""ATC groups of the shipped catalog that are on the chronic-disease drug list (diabetes, hypertension, lipids,
anticoagulants, epilepsy, mental health, asthma / COPD)."""
INSTITUTION_REGION = {"CC": "220100", "JN": "370100", "CX": "532300"}
"""The region of the reference's institution-specific caps (``P-CC-001`` → Changchun)."""
BATCH = 200


def _key(version: str, what: str, ident: str) -> str:
    return f"seed:{version}:{what}:{ident}"[:200]


def seed_commands(reference: Reference | None = None) -> list[c.RegistryCommand]:
    """The registry commands of the shipped reference data (one version), in the order they must apply."""
    ref = reference or load_reference()
    by = f"seed:{ref.version}"
    start = date(int(ref.version.split(".")[0]), 1, 1)
    regions = [r.code for r in ref.regions]
    out: list[c.RegistryCommand] = []
    for drug in ref.drugs:
        out.append(c.ListDrug(command_id=_key(ref.version, "drug", drug.code), changed_by=by, drug_code=drug.code,
                              name=drug.name, spec=drug.spec, form=drug.form, category=drug.category,
                              chronic_list=drug.atc.startswith(CHRONIC_ATC_PREFIXES), effective_from=start))
    for cap in ref.price_caps:
        if cap.institution_id == ANY_INSTITUTION:
            for region in regions:
                ident = f"{cap.drug_code}:{region}"
                out.append(c.SetPriceCap(command_id=_key(ref.version, "cap", ident), changed_by=by,
                                         drug_code=cap.drug_code, region=region, cap=cap.cap, effective_from=start))
                out.append(c.SetPaymentStandard(command_id=_key(ref.version, "standard", ident), changed_by=by,
                                                drug_code=cap.drug_code, region=region, amount=cap.cap,
                                                effective_from=start))
        else:
            own = INSTITUTION_REGION.get(cap.institution_id.split("-")[1] if "-" in cap.institution_id else "")
            if own is None:
                continue
            out.append(c.SetPriceCap(command_id=_key(ref.version, "cap", f"{cap.drug_code}:{cap.institution_id}"),
                                     changed_by=by, drug_code=cap.drug_code, region=own,
                                     institution_id=cap.institution_id, cap=cap.cap, effective_from=start))
    for region in sorted(set(regions) & set(available_regions())):
        policy = load_policy(region)
        for disease in policy.disease_scope.diseases:
            if not _icd10(disease.code):
                continue
            out.append(c.AddChronicDisease(command_id=_key(ref.version, "chronic", f"{region}:{disease.code}"),
                                           changed_by=by, region=region, disease_code=disease.code,
                                           name=disease.name, effective_from=min(start, policy.effective_from)))
    return out


def _icd10(code: str) -> bool:
    import re

    return re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", code) is not None


@dataclass
class SeedReport:
    """How the seed went: commands applied now, answered from an earlier run, facts already there, refusals."""

    version: str
    counts: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def add(self, command: c.Command, outcome: Outcome) -> None:
        if outcome.ok:
            self.counts["replayed" if outcome.replayed else "applied"] += 1
        elif outcome.error in ("AlreadyExists", "IllegalTransition"):  # registered by the authority before
            self.counts["already registered"] += 1
        else:
            self.counts["refused"] += 1
            self.refused.append(f"{type(command).__name__} {command.command_id}: {outcome.error} {outcome.reason}")


class Registrar(Protocol):
    """What the seed needs of the application (``RxTrail``)."""

    def apply_batch(self, commands: Sequence[c.Command]) -> list[Outcome]: ...

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, Outcome]: ...


def seed(app: Registrar, reference: Reference | None = None,
         progress: Callable[[int, int], Any] | None = None) -> SeedReport:
    """Send the reference data as registry commands through ``app.apply_batch``; a store the same version was seeded
    into already (its last command has an outcome) is left alone at the cost of one read."""
    ref = reference or load_reference()
    commands = seed_commands(ref)
    report = SeedReport(ref.version)
    last = commands[-1].command_id
    if last is not None and app.recorded_outcomes([last]):
        report.counts["already seeded"] = len(commands)
        return report
    for start in range(0, len(commands), BATCH):
        chunk = commands[start:start + BATCH]
        for command, outcome in zip(chunk, app.apply_batch(chunk), strict=True):
            report.add(command, outcome)
        if progress is not None:
            progress(min(start + BATCH, len(commands)), len(commands))
    return report
