"""Pseudonyms and sealing without a database (the PostgreSQL key store is exercised in integration)."""

from __future__ import annotations

import pytest

from services.application.privacy import (
    InMemoryPatientKeyStore,
    PatientForgotten,
    PatientVault,
    SealBroken,
    pseudonym,
)

SECRET = b"platform-secret-for-tests-0123456789"
PERSON = {"name": "张三", "id_number": "110101199003071234", "phone": "13800138000"}


def vault() -> PatientVault:
    return PatientVault(SECRET, InMemoryPatientKeyStore())


def test_pseudonym_is_stable_keyed_and_normalised() -> None:
    a = pseudonym(SECRET, "110101199003071234")
    assert a == pseudonym(SECRET, " 110101199003071234 ")
    assert pseudonym(SECRET, "11010119900307123x") == pseudonym(SECRET, "11010119900307123X")
    assert a != pseudonym(b"another-platform-secret-xxxxxxxx", "110101199003071234")
    assert len(a) == 64 and "110101" not in a


def test_pseudonym_refuses_short_secret_and_empty_id() -> None:
    with pytest.raises(ValueError):
        pseudonym(b"short", "110101199003071234")
    with pytest.raises(ValueError):
        pseudonym(SECRET, "  ")


def test_seal_round_trips_and_hides_the_fields() -> None:
    v = vault()
    ref = v.patient_ref(PERSON["id_number"])
    sealed = v.seal(ref, PERSON)
    assert PERSON["id_number"] not in sealed and PERSON["phone"] not in sealed
    assert v.unseal(ref, sealed) == PERSON
    assert v.seal(ref, PERSON) != sealed  # fresh nonce each time


def test_seal_refuses_fields_that_are_not_personal() -> None:
    with pytest.raises(ValueError, match="diagnosis"):
        vault().seal("p" * 64, {"diagnosis": "E11"})


def test_sealed_value_bound_to_its_patient_and_tamper_evident() -> None:
    v = vault()
    a, b = v.patient_ref("A-1"), v.patient_ref("B-2")
    sealed = v.seal(a, PERSON)
    v.seal(b, PERSON)
    with pytest.raises((SealBroken, PatientForgotten)):
        v.unseal(b, sealed)
    version, key_id, body = sealed.split(".", 2)
    flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
    with pytest.raises(SealBroken):
        v.unseal(a, f"{version}.{key_id}.{flipped}")
    with pytest.raises(SealBroken):
        v.unseal(a, "not-a-sealed-value")


def test_forgetting_shreds_and_a_returning_patient_gets_a_new_key() -> None:
    v = vault()
    ref = v.patient_ref(PERSON["id_number"])
    old = v.seal(ref, PERSON)
    assert v.forget_patient(ref) == 1
    with pytest.raises(PatientForgotten, match="forgotten") as info:
        v.unseal(ref, old)
    assert PERSON["name"] not in str(info.value)
    new = v.seal(ref, PERSON)
    assert v.unseal(ref, new) == PERSON
    with pytest.raises(PatientForgotten):
        v.unseal(ref, old)
