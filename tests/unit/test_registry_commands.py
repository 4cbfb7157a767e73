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
