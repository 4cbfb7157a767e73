"""Registry commands (issue 13): who may change which fact, every command names its sender, patients by pseudonym."""

from __future__ import annotations

import pytest

from services.application import commands as c
from services.application.access import Forbidden
from services.application.registries import REGISTRY_HANDLERS, authorise, national
from services.domain.errors import InvalidCommand
from tests.support.registries import BY

# --- who may change what ------------------------------------------------------------------------------------------


def test_the_agency_changes_only_its_own_regions_facts() -> None:
    authorise("agency:220100", "220100", "designate a pharmacy")
    authorise("seed:2026.1", "370100", "designate a pharmacy")
    with pytest.raises(Forbidden, match="agency may not designate a pharmacy of region 370100"):
        authorise("agency:220100", "370100", "designate a pharmacy")
    with pytest.raises(Forbidden, match="regulator may not"):
        authorise("regulator:NHSA", "370100", "designate a pharmacy")
    authorise("regulator:NHSA", "370100", "declare a public-health emergency", regulator=True)
    with pytest.raises(Forbidden):
        authorise("hospital:H-1", "220100", "register a physician")
    with pytest.raises(InvalidCommand):
        authorise("nobody", "220100", "register a physician")


def test_the_national_catalog_is_the_regulators() -> None:
    national("regulator:NHSA", "list a drug")
    national("seed:2026.1", "list a drug")
    with pytest.raises(Forbidden, match="national catalog"):
        national("agency:220100", "list a drug")


def test_every_registry_command_has_a_handler_and_names_its_sender() -> None:
    assert set(c.REGISTRY_COMMANDS) <= set(REGISTRY_HANDLERS)
    for command in c.REGISTRY_COMMANDS:
        assert command.model_fields["changed_by"].is_required(), command.__name__


def test_patient_commands_take_a_national_id_or_a_pseudonym_never_both_and_never_print_it() -> None:
    cmd = c.GrantChronicEntitlement(changed_by=BY, patient_national_id="220102198001010011", disease_code="E11")
    assert "220102" not in repr(cmd) and "220102" not in str(cmd)
    with pytest.raises(ValueError, match="exactly one"):
        c.GrantChronicEntitlement(changed_by=BY, disease_code="E11")
    with pytest.raises(ValueError, match="exactly one"):
        c.GrantChronicEntitlement(changed_by=BY, disease_code="E11", patient_ref="p" * 64,
                                  patient_national_id="220102198001010011")


def test_the_reference_data_becomes_registry_commands_sent_as_the_seed_with_stable_keys() -> None:
    from collections import Counter

    from services.reference import load_reference
    from services.reference.seed import seed_commands

    ref = load_reference()
    commands = seed_commands(ref)
    kinds = Counter(type(cmd).__name__ for cmd in commands)
    regions = len(ref.regions)
    defaults = sum(cap.institution_id == "*" for cap in ref.price_caps)
    assert kinds["ListDrug"] == len(ref.drugs)
    assert kinds["SetPaymentStandard"] == defaults * regions
    assert kinds["SetPriceCap"] >= defaults * regions and kinds["AddChronicDisease"] > 0
    assert {cmd.changed_by for cmd in commands} == {f"seed:{ref.version}"}
    keys = [cmd.command_id for cmd in commands]
    assert len(set(keys)) == len(keys) and keys == [cmd.command_id for cmd in seed_commands(ref)]
    caps = [cmd for cmd in commands if isinstance(cmd, c.SetPriceCap) and cmd.drug_code == "XA10BAA001A001030101"]
    assert {(cap.region, cap.institution_id, str(cap.cap)) for cap in caps} >= {
        ("220100", None, "11.25"), ("220100", "P-CC-002", "9.68"), ("370100", "P-JN-002", "9.90")}


def test_a_csv_row_becomes_a_body_lists_split_empty_cells_unset_unknown_columns_refused() -> None:
    from services.cli.registry import row_body

    body = row_body(c.DesignatePharmacy, {"pharmacy_id": "PH-1", "name": "Kangda", "pooling_region": "220100",
                                          "agreement_no": "A", "drug_codes": "XA10BAA001A001030101; XA10BAB001A002030101",
                                          "chronic_qualified": "yes", "payee_id": ""})
    assert body["drug_codes"] == ["XA10BAA001A001030101", "XA10BAB001A002030101"] and body["chronic_qualified"] is True
    assert "payee_id" not in body
    with pytest.raises(ValueError, match="unknown column"):
        row_body(c.DesignatePharmacy, {"pharmacy_id": "PH-1", "colour": "red"})
