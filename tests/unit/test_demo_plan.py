"""The demo's day as data (``services.simulate.plan_day``): the same seed gives the same day, every planted
misbehaviour is in it on patients of its own, and the honest traffic has the variety the demo promises."""

from __future__ import annotations

from collections import Counter

import pytest

from services.simulate import DAY_REGIONS, PLANTS, physician_key, plan_day, suspended_physician


def test_same_seed_same_day_and_another_seed_another_day() -> None:
    a, b, c = plan_day(7, 60), plan_day(7, 60), plan_day(8, 60)
    assert a.patients == b.patients and [r.__dict__ for r in a.prescriptions] == [r.__dict__ for r in b.prescriptions]
    assert a.patients != c.patients
    codes = [code for rx in a.prescriptions for code in rx.trace_codes]
    assert all(len(code) == 20 and code.isdigit() for code in codes)
    assert len(set(codes)) == len(codes)  # one code per pack, never two packs with one code (the plant reuses one)
    signer = physician_key(a.tag, a.hospitals[0].physicians[0])
    assert signer.sign(b"x") == physician_key(b.tag, b.hospitals[0].physicians[0]).sign(b"x")


def test_every_plant_is_there_on_patients_of_its_own() -> None:
    plan = plan_day(7, 60)
    assert {rx.plant for rx in plan.prescriptions if rx.plant} == set(PLANTS)
    honest_patients = {rx.patient for rx in plan.prescriptions if rx.plant is None}
    for rx in plan.prescriptions:
        if rx.plant:
            assert rx.patient not in honest_patients, rx.key
    shop = plan.planted("doctor_shopping")
    assert len(shop) == 2 and shop[0].patient == shop[1].patient
    assert shop[0].physician_id != shop[1].physician_id and shop[0].hospital_id != shop[1].hospital_id
    assert shop[0].items[0].drug_code == shop[1].items[0].drug_code
    assert sum(rx.items[0].days_supply for rx in shop) <= 56  # R4 lets both through: only the analytics see it
    assert plan.planted("suspended_physician")[0].physician_id == suspended_physician(plan.tag)
    assert all(rx.physician_id != suspended_physician(plan.tag) for rx in plan.prescriptions if rx.plant is None)
    assert plan.planted("long_rx_no_emergency")[0].items[0].days_supply > 56
    offline = plan.planted("no_offline_diagnosis")[0]
    assert offline.original_institution_id == offline.hospital_id
    assert plan.planted("price_above_cap")[0].over_cap
    reuse = plan.planted("reused_trace_code")[0]
    assert reuse.reuse_code_of in {rx.key for rx in plan.prescriptions if rx.plant is None}


def test_honest_day_has_the_promised_variety() -> None:
    plan = plan_day(11, 400)
    assert {h.region for h in plan.hospitals} == set(DAY_REGIONS)
    assert len({h.physical_id for h in plan.hospitals}) == len(plan.hospitals) >= 3
    assert len(plan.pharmacies) == 20 and {p.region for p in plan.pharmacies} == set(DAY_REGIONS)
    kinds = Counter(p.insurance_type for p in plan.patients)
    assert kinds["employee"] > 0 and kinds["resident"] > 0
    offsite = [p for p in plan.patients if p.insured_region != p.treated_region]
    assert any(p.filed_for for p in offsite) and any(not p.filed_for for p in offsite)
    channels = Counter(rx.channel for rx in plan.prescriptions if rx.plant is None)
    assert channels["kafka"] > 50 and channels["http"] > 200
    for rx in plan.prescriptions:  # each patient is seen in the region they are treated in
        assert plan.hospital(rx.hospital_id).region == plan.patients[rx.patient].treated_region
    with pytest.raises(ValueError):
        plan_day(1, 3)
