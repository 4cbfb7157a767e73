"""The rule catalogue (services.domain.rules) is the one place rule ids come from, and it is honest:
every refusal and flag names a catalogued rule, every enforced rule has a check the aggregates call, every entry
cites its source, and ``rxtrail rules`` prints it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.domain import rules
from services.domain.policy import RuleConfig
from services.domain.rules import RULES, SEED_FILES, RuleKind, catalogue

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ROOT / "services" / "domain"
RULES_FILE = DOMAIN / "rules.py"
RULE_ID = re.compile(r"^R\d{1,2}$")
CHECK = re.compile(r"^(check|flag)_(r\d{1,2})_\w+$")
VIOLATIONS = {"RuleViolation", "ValidityElapsed"}
R4_DEFAULTS = {"ordinary_rx_max_days": 7, "long_rx_max_days": 56, "emergency_max_days": 90}  # DOMAIN.md: 56 / 90


def _trees(*folders: Path) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for f in folders for p in sorted(f.rglob("*.py"))]


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _check_functions() -> dict[str, str]:
    """check/flag function name -> the rule id it is named for."""
    tree = ast.parse(RULES_FILE.read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (m := CHECK.match(node.name)):
            found[node.name] = m.group(2).upper()
    return found


def test_ids_are_numbered_in_order_from_r1_and_constants_name_them() -> None:
    assert list(RULES) == [f"R{n}" for n in range(1, len(RULES) + 1)]
    assert len(RULES) >= 19
    for rule_id in RULES:
        assert getattr(rules, rule_id) == rule_id


def test_every_entry_cites_a_source_and_says_what_it_does() -> None:
    for rule in catalogue():
        assert rule.title.strip() and rule.source.strip(), rule.id
        assert isinstance(rule.kind, RuleKind)
        assert set(rule.seed_files) <= set(SEED_FILES.values())
        cited = sorted(set(re.findall(r"\b(00[0-4])\b", rule.source)))
        assert sorted(SEED_FILES[n] for n in cited) == sorted(rule.seed_files), rule.id
    assert RULES["R13"].source.startswith("trail integrity") and RULES["R13"].seed_files
    assert RULES["R19"].seed_files == ()  # 处方管理办法, outside the seeds


def test_kinds() -> None:
    assert RULES["R5"].kind is RuleKind.FLAG
    assert {r.id for r in catalogue() if r.kind is RuleKind.REJECT_AND_FLAG} == {"R7", "R8"}


def test_parameters_are_rule_config_fields_with_their_current_values() -> None:
    fields = set(RuleConfig.model_fields)
    named = {p.name for r in catalogue() for p in r.parameters}
    assert named == fields, "every RuleConfig field belongs to a rule, and every parameter is a RuleConfig field"
    assert {p.name: p.value for p in RULES["R4"].parameters} == R4_DEFAULTS
    assert {p.name: p.value for p in RULES["R19"].parameters} == {"validity_days": 3}
    configured = {r.id: r for r in catalogue(RuleConfig(long_rx_max_days=28, validity_days=1))}
    assert {p.name: p.value for p in configured["R4"].parameters}["long_rx_max_days"] == 28
    assert {p.name: p.value for p in configured["R19"].parameters} == {"validity_days": 1}


def test_every_violation_in_the_domain_is_built_in_rules_py_with_a_catalogued_constant() -> None:
    built = []
    for path, tree in _trees(DOMAIN):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in VIOLATIONS:
                built.append((path.name, node.lineno))
                assert path == RULES_FILE, f"{path.name}:{node.lineno} builds a violation outside the catalogue"
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Name) and first.id in RULES, (
                    f"rules.py:{node.lineno}: the rule id must be a catalogue constant"
                )
    assert len(built) > 20


def test_no_bare_rule_id_strings_in_services_or_projections() -> None:
    bare = []
    for path, tree in _trees(ROOT / "services", ROOT / "projections"):
        if path == RULES_FILE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and RULE_ID.match(node.value):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert bare == []


def test_no_hard_coded_rule_range_in_docs_of_the_code() -> None:
    hard_coded = re.compile(r"R1\s*(\.\.|–|-|to)\s*R1[0-9]")
    found = [
        str(p.relative_to(ROOT))
        for folder in (ROOT / "services", ROOT / "projections", ROOT / "events")
        for p in folder.rglob("*.py")
        if hard_coded.search(p.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_enforced_is_honest_each_enforced_rule_has_a_named_check_and_the_aggregates_call_every_check() -> None:
    """A rule is marked enforced exactly when it has a check_/flag_ function, and every such function is called
    by the domain; a partly enforced rule says in ``note`` what is missing."""
    checks = _check_functions()
    assert set(checks.values()) == {r.id for r in catalogue() if r.enforced}
    called = {
        _called(node)
        for path, tree in _trees(DOMAIN)
        if path != RULES_FILE
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert set(checks) - called == set(), "a check nobody calls"


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_rxtrail_rules_prints_the_catalogue(as_json: bool) -> None:
    result = CliRunner().invoke(app, ["rules", "--json"] if as_json else ["rules"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    if not as_json:
        for rule_id in RULES:
            assert re.search(rf"│ {rule_id}\s+│", result.output), rule_id
        return
    printed = json.loads(result.output)
    assert printed == [r.model_dump(mode="json") for r in catalogue()]
    r4 = next(r for r in printed if r["id"] == "R4")
    assert r4["source"] == "003 art. 13" and r4["kind"] == "reject" and r4["enforced"] is True
    assert r4["seed_files"] == ["003_ba2713e3c06f819a.txt"]
    assert {p["name"]: p["value"] for p in r4["parameters"]} == R4_DEFAULTS
    assert next(r for r in printed if r["id"] == "R18")["enforced"] is True
