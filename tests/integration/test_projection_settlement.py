"""Settlement projections on real Kafka + PostgreSQL: totals per party and month, duplicates change nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from events import topics
from events.prescription import DispenserKind, PrescriptionSettled
from projections.hospital_settlement import HospitalSettlement, institution_statements, statements
from projections.hospital_settlement.ledger import settlement_month
from projections.pharmacy_settlement import PharmacySettlement
from projections.pharmacy_settlement import statements as pharmacy_statements
from services.infra.kafka_admin import ensure_topics_async
from services.reference.policies import provider_terms
from tests.support import unique_topic
from tests.support.trails import (
    PROJECTION_NAMES,
    Published,
    Trail,
    dump_all,
    publish,
    publish_and_build_reference,
    run_all_to_idle,
    run_to_idle,
    version_total,
)

ZERO = Decimal("0.00")


@pytest.fixture(scope="module")
async def published(make_database: Callable[[], str], kafka_bootstrap: str) -> Published:
    return await publish_and_build_reference(make_database, kafka_bootstrap, n=24)


def expected_hospital(trails: list[Trail]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    for t in trails:
        c = t.consultation
        assert c is not None and t.settled is not None
        row = out[(t.hospital_id, t.institution_id, settlement_month(c.timestamp))]
        row["consultations"] += 1
        row["consultation_fees"] += c.fund + c.personal_account + c.self_pay
        row["fund"] += c.fund
        row["personal_account"] += c.personal_account
        row["self_pay"] += c.self_pay
        s = t.settled
        if s.settled_with_kind is DispenserKind.HOSPITAL:
            row = out[(t.hospital_id, t.institution_id, settlement_month(s.timestamp))]
            row["prescriptions"] += 1
            row["drug_fees"] += s.total - s.delivery_fee
            row["fund"] += s.fund
            row["personal_account"] += s.personal_account
            row["self_pay"] += s.self_pay - s.delivery_fee
            row["delivery_fees"] += s.delivery_fee
            if "refused" in t.times:
                out[(t.hospital_id, t.institution_id, settlement_month(t.times["refused"]))]["refused"] += t.refused
                out[(t.hospital_id, t.institution_id, settlement_month(t.times["clawed_back"]))]["clawed_back"] += \
                    t.clawed_back
    return out


def expected_pharmacy(trails: list[Trail], jinan: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    for t in trails:
        s = t.settled
        assert s is not None
        if s.settled_with_kind is not DispenserKind.PHARMACY:
            continue
        party = t.delivery_enterprise_id if jinan else t.pharmacy_id
        assert party is not None
        row = out[(party, settlement_month(s.timestamp))]
        row["prescriptions"] += 1
        row["drug_fees"] += s.total - s.delivery_fee
        row["fund"] += s.fund
        row["delivery_fees"] += s.delivery_fee
        if "refused" in t.times:
            out[(party, settlement_month(t.times["refused"]))]["refused"] += t.refused
            out[(party, settlement_month(t.times["clawed_back"]))]["clawed_back"] += t.clawed_back
    return out


def _net(r: dict[str, Any]) -> Decimal:
    """What the agency owes before any deposit (issue 14: fund + personal account; the deposit is region policy,
    applied where the statement is made — services.domain.statement.amounts_due — not in the projection)."""
    return r["fund"] + r["personal_account"] - r["refused"] - r["clawed_back"] - r["reversed"]


async def test_hospital_statements_match_the_events(published: Published) -> None:
    with psycopg.connect(published.reference_db) as conn:
        rows = statements(conn)
        rolled = institution_statements(conn)
    expected = expected_hospital(published.trails)
    assert {(r["hospital_id"], r["physical_institution_id"], r["month"]) for r in rows} == set(expected)
    for r in rows:
        want = expected[(r["hospital_id"], r["physical_institution_id"], r["month"])]
        for column in ("consultations", "consultation_fees", "prescriptions", "drug_fees", "fund", "personal_account",
                       "self_pay", "delivery_fees", "refused", "clawed_back"):
            assert r[column] == want[column], (column, r)
        assert r["reversed"] == ZERO and r["insured_net"] == _net(r)
    assert len({r["month"] for r in rows}) >= 2  # the trails cross a settlement month
    assert any(r["refused"] > 0 for r in rows) and any(r["clawed_back"] > 0 for r in rows)
    # roll-up: two hospitals share INST1; the deposit is taken once on the institution's totals
    per_inst: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_inst[(r["physical_institution_id"], r["month"])].append(r)
    assert {(r["physical_institution_id"], r["month"]) for r in rolled} == set(per_inst)
    assert any(r["hospitals"] == 2 for r in rolled)
    for r in rolled:
        members = per_inst[(r["physical_institution_id"], r["month"])]
        for column in ("consultation_fees", "drug_fees", "fund", "personal_account", "refused", "clawed_back",
                       "reversed", "insured_net"):
            assert r[column] == sum(m[column] for m in members)


async def test_pharmacy_statements_are_paid_in_full_with_delivery_apart(published: Published) -> None:
    with psycopg.connect(published.reference_db) as conn:
        rows = pharmacy_statements(conn)
    expected = expected_pharmacy(published.trails)
    assert {(r["party_id"], r["month"]) for r in rows} == set(expected)
    for r in rows:
        want = expected[(r["party_id"], r["month"])]
        assert r["party_kind"] == "pharmacy"
        for column in ("prescriptions", "drug_fees", "fund", "delivery_fees", "refused", "clawed_back"):
            assert r[column] == want[column], (column, r)
        assert r["insured_net"] == _net(r)  # paid in full: no deposit is ever withheld from a pharmacy
        assert r["drug_fees"] == r["fund"] + r["personal_account"] + r["self_pay"]  # delivery never in the split
    assert any(r["delivery_fees"] > 0 for r in rows)


async def test_settlement_projections_add_up_to_the_settled_events(published: Published) -> None:
    settled = [t.settled for t in published.trails if t.settled is not None]
    consultations = [t.consultation for t in published.trails if t.consultation is not None]
    totals = "SELECT sum(drug_fees + delivery_fees), sum(fund), sum(prescriptions) FROM {}.monthly"
    with psycopg.connect(published.reference_db) as conn:
        h = conn.execute(totals.format("hospital_settlement")).fetchone()
        p = conn.execute(totals.format("pharmacy_settlement")).fetchone()
    assert h is not None and p is not None
    assert h[0] + p[0] == sum(s.total for s in settled)
    assert h[1] - sum(c.fund for c in consultations) + p[1] == sum(s.fund for s in settled)
    assert h[2] + p[2] == len(settled)


async def test_every_event_twice_leaves_every_table_as_a_clean_pass(
        published: Published, make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    topic = unique_topic(f"{topics.EVENTS}.twice")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    half = len(published.events) // 2
    await publish(kafka_bootstrap, topic, published.events[:half])
    await publish(kafka_bootstrap, topic, published.events[:half])
    await publish(kafka_bootstrap, topic, published.events[half:])
    await publish(kafka_bootstrap, topic, published.events)
    db = make_database()
    await run_all_to_idle(db, kafka_bootstrap, topic, max_records=37, expect=version_total(published.events))
    assert dump_all(db, PROJECTION_NAMES) == published.reference


async def test_jinan_style_settles_pharmacy_fees_with_the_delivery_enterprise(
        published: Published, kafka_bootstrap: str) -> None:
    """The payee is on each settlement (``payee_id``, set by the settlement worker from the treatment region's
    provider terms; Jinan: the delivery enterprise, 004 §六): the same trails settled with their enterprise as payee
    are booked to it."""
    schema = "pharmacy_settlement_jinan"
    enterprise = {t.prescription_id: t.delivery_enterprise_id for t in published.trails if t.delivery_enterprise_id}
    events = [e.model_copy(update={"payee_id": enterprise[e.originator_id]})
              if isinstance(e, PrescriptionSettled) and e.originator_id in enterprise else e for e in published.events]
    topic = unique_topic(f"{topics.EVENTS}.jinan")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    await publish(kafka_bootstrap, topic, events)
    await run_to_idle(PharmacySettlement(), published.reference_db, kafka_bootstrap, topic, schema=schema)
    with psycopg.connect(published.reference_db) as conn:
        rows = pharmacy_statements(conn, schema)
    expected = expected_pharmacy(published.trails, jinan=True)
    assert {(r["party_id"], r["month"]) for r in rows} == set(expected)
    assert {r["party_kind"] for r in rows} == {"delivery_enterprise"}
    for r in rows:
        assert r["fund"] == expected[(r["party_id"], r["month"])]["fund"]
        assert r["refused"] == expected[(r["party_id"], r["month"])]["refused"]
    with psycopg.connect(published.reference_db) as conn:
        row = conn.execute("SELECT sum(fund) FROM pharmacy_settlement.monthly").fetchone()
    assert row is not None and sum(r["fund"] for r in rows) == row[0]


def test_the_deposit_is_region_policy_not_projection_configuration() -> None:
    """Issue 14: one deposit switch for the whole deployment was wrong; the rate is the region's provider terms."""
    with pytest.raises(TypeError):
        HospitalSettlement(deposit_rate=Decimal("0.05"))  # type: ignore[call-arg]
    assert provider_terms("370100", date(2026, 3, 31)).hospital_deposit_rate == Decimal("0.05")
    assert provider_terms("220100", date(2026, 3, 31)).hospital_deposit_rate == ZERO
