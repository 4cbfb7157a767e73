"""Issue 14's worked examples on real PostgreSQL: the settlement record written as events (tests.support.money: what
the settlement worker and the agency record), the settlement projections rebuilt from the event store, months closed by the
statement desk, the agency's read over HTTP-free ``Reads`` and ``rxtrail statement`` compared to the fen.

Region provider terms (services/reference/policies/*.json ``provider_terms``): Jinan 370100 withholds a 5%
deposit from physical institutions and pays circulated drugs to the supply/delivery enterprise (003 art. 20;
004 §六); Changchun 220100 withholds none and pays the pharmacy.

Jinan, March 2026, institution PJ (internet hospitals HJ1, HJ2):
  HJ1 consultation fund 6.00 + account 6.00; HJ1 rx (hospital-dispensed) fund 100.00 + account 20.00;
  HJ2 rx fund 50.00 + account 10.00; audit refuses 10.00 of HJ2's rx in March.
  → fund 156.00, account 36.00, refused 10.00: audited 182.00, deposit 5% = 9.10, payable 172.90.
Jinan, March, delivery enterprise DJ (payee of pharmacy PHJ's prescription): fund 70.00 + account 30.00 → 100.00 in
  full (no deposit for a delivery enterprise, even in Jinan).
Changchun, March, pharmacy PHC: fund 40.00 + account 5.00 → 45.00 in full.
April: a refusal of 5.00 on HJ1's rx recorded with a March timestamp after March was closed (consumer lag) is
  carried by April's statement as a line for 2026-03; the agency reverses PHC's March settlement in April (45.00):
  April's PHC statement is −45.00, owed by the pharmacy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import pytest
from psycopg_pool import ConnectionPool

from events.statement import FailureResolution, PartyKind, SubjectKind
from services.adapters.statement_figures import EventStoreDirectory, ProjectionFigures
from services.api.reads import Reads
from services.application import commands as c
from services.application.statements import ClosedStatement, StatementDesk
from services.bootstrap import build_application
from services.domain.clock import FixedClock
from services.domain.settlement_case import SettlementCase
from services.infra.settings import Settings
from tests.support import unique_id
from tests.support.money import SettlementRecord

JINAN, CHANGCHUN = "370100", "220100"
SECRET = b"rxtrail-money-examples-secret-012345678"
D = Decimal
DRUG = "XA10BAA001A001030101"


def at(day: str, hour: int = 2) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


@dataclass
class World:
    record: SettlementRecord
    clock: FixedClock
    ids: dict[str, str]
    rx: dict[str, UUID]

    def desk(self) -> StatementDesk:
        return StatementDesk(self.record.app.store, ProjectionFigures(self.record.db),
                             EventStoreDirectory(self.record.db), self.clock)

    def reads(self) -> Reads:
        return Reads(self.record.app.store, ConnectionPool(self.record.db, min_size=1, max_size=2, open=True))


def by_party(closed: list[ClosedStatement]) -> dict[str, ClosedStatement]:
    return {s.statement.party_id: s for s in closed}


@pytest.fixture(scope="module")
def world(make_database: Callable[[], str]) -> Iterator[World]:
    db = make_database()
    clock = FixedClock(at("2026-03-05"))
    app = build_application(Settings(database_url=db, pseudonym_secret=SECRET), clock=clock)
    r = SettlementRecord(app, db)
    t = unique_id("M")
    ids = {"PJ": f"PJ-{t}", "HJ1": f"HJ1-{t}", "HJ2": f"HJ2-{t}", "PHJ": f"PHJ-{t}", "DJ": f"DJ-{t}",
           "PC": f"PC-{t}", "HC": f"HC-{t}", "PHC": f"PHC-{t}"}
    r.pharmacy(ids["PHC"], CHANGCHUN, at("2026-01-02"))
    rx: dict[str, UUID] = {}
    # Jinan, March
    v = r.visit(JINAN, ids["HJ1"], ids["PJ"], at("2026-03-05"))
    r.consultation(v, at("2026-03-05", 3), "6.00", "6.00", "0.00", ids["PJ"])
    rx["hj1"] = r.settled_rx(JINAN, ids["HJ1"], ids["PJ"], at("2026-03-06"), "100.00", "20.00")
    rx["hj2"] = r.settled_rx(JINAN, ids["HJ2"], ids["PJ"], at("2026-03-07"), "50.00", "10.00")
    r.refuse(rx["hj2"], "10.00", at("2026-03-20"))
    rx["phj"] = r.settled_rx(JINAN, ids["HJ1"], ids["PJ"], at("2026-03-08"), "70.00", "30.00", pharmacy=ids["PHJ"],
                             enterprise=ids["DJ"], payee=ids["DJ"])
    # Changchun, March
    rx["phc"] = r.settled_rx(CHANGCHUN, ids["HC"], ids["PC"], at("2026-03-09"), "40.00", "5.00", pharmacy=ids["PHC"])
    r.rebuild()
    clock.set(at("2026-04-02"))
    yield World(r, clock, ids, rx)
    app.close()


def figures(s: ClosedStatement) -> tuple[Decimal, ...]:
    st = s.statement
    return st.gross, st.personal_account, st.refused, st.clawed_back, st.reversed, st.withheld_deposit, st.payable


def test_jinan_hospital_month_withholds_the_5_percent_deposit_and_pays_the_enterprise(world: World) -> None:
    march = by_party(world.desk().close_month("2026-03"))
    ids = world.ids
    assert {ids["PJ"], ids["DJ"], ids["PHC"]} <= set(march)
    pj = march[ids["PJ"]]
    assert pj.statement.party_kind is PartyKind.PHYSICAL_INSTITUTION and pj.statement.pooling_region == JINAN
    # fund 156.00, account 36.00, refused 10.00: audited 182.00, deposit 5% = 9.10, payable 172.90
    assert figures(pj) == (D("156.00"), D("36.00"), D("10.00"), D("0.00"), D("0.00"), D("9.10"), D("172.90"))
    assert pj.statement.deposit_rate == D("0.05")
    assert pj.detail is not None and {m.party_id for m in pj.detail.members} == {ids["HJ1"], ids["HJ2"]}
    dj = march[ids["DJ"]]
    assert dj.statement.party_kind is PartyKind.DELIVERY_ENTERPRISE and ids["PHJ"] not in march
    assert figures(dj) == (D("70.00"), D("30.00"), D("0.00"), D("0.00"), D("0.00"), D("0.00"), D("100.00"))


def test_changchun_pharmacy_month_is_paid_in_full(world: World) -> None:
    phc = by_party(world.desk().close_month("2026-03"))[world.ids["PHC"]]
    assert phc.statement.party_kind is PartyKind.PHARMACY and phc.statement.pooling_region == CHANGCHUN
    assert figures(phc) == (D("40.00"), D("5.00"), D("0.00"), D("0.00"), D("0.00"), D("0.00"), D("45.00"))


def test_the_cli_and_the_agency_read_agree_to_the_fen(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from services.cli import app as cli

    monkeypatch.setenv("RXTRAIL_DATABASE_URL", world.record.db)
    result = CliRunner().invoke(cli, ["statement", "--month", "2026-03"])
    assert result.exit_code == 0, result.output
    printed = {row.split(",")[2]: D(row.split(",")[8]) for row in result.stdout.splitlines() if ",8,Payable" in row}
    reads = world.reads()
    read = {item.party_id: item.figures for region in (JINAN, CHANGCHUN)
            for item in reads.region_statements(region, "2026-03")}
    assert set(printed) == set(read)
    for party, payable in printed.items():
        assert read[party]["status"] == "closed" and read[party]["payable"] == payable, party
    assert printed[world.ids["PJ"]] == D("172.90")


def test_a_late_refusal_is_carried_and_a_reversal_lands_on_the_next_statement(world: World) -> None:
    r, ids = world.record, world.ids
    march = by_party(world.desk().close_month("2026-03"))
    # a refusal stamped in March reaches the record after March was closed; a reversal in April
    r.refuse(world.rx["hj1"], "5.00", at("2026-03-31", 10))
    case = r.case(SubjectKind.PRESCRIPTION, world.rx["phc"], at("2026-04-10"))
    case.reverse(clock=FixedClock(at("2026-04-10")), party_id=ids["PHC"], party_kind=PartyKind.PHARMACY,
                 paid_fund=D("40.00"), paid_personal_account=D("5.00"), taken_elsewhere=D("0.00"), fund="40.00",
                 personal_account="5.00", self_pay_refund="0.00", reason="drugs returned",
                 reversed_by=f"agency:{CHANGCHUN}", reversal_ref="RV-1")
    r.events += case.collect_events()
    r.rebuild()
    world.clock.set(at("2026-05-02"))
    try:
        again = by_party(world.desk().close_month("2026-03"))
        assert all(not s.created for s in again.values())  # closed stays closed
        assert figures(again[ids["PJ"]]) == figures(march[ids["PJ"]])
        april = by_party(world.desk().close_month("2026-04"))
        pj = april[ids["PJ"]].statement
        (line,) = pj.carried
        assert (line.month, line.refused, line.net) == ("2026-03", D("5.00"), D("-5.00"))
        assert (pj.gross, pj.withheld_deposit, pj.payable, pj.owed_by_party) == (D("0.00"), D("0.00"), D("-5.00"),
                                                                                  True)
        phc = april[ids["PHC"]].statement
        assert (phc.reversed, phc.payable, phc.owed_by_party, phc.carried) == (D("45.00"), D("-45.00"), True, ())
        # every statement: payable + withheld = fund + account − refused − clawed back − reversed (carried included)
        for s in [*again.values(), *april.values()]:
            st = s.statement
            carried = sum((x.net for x in st.carried), D("0.00"))
            assert st.payable + st.withheld_deposit == (st.gross + st.personal_account - st.refused - st.clawed_back
                                                        - st.reversed + carried)
        # closing April again carries nothing twice
        assert by_party(world.desk().close_month("2026-04"))[ids["PJ"]].statement.carried == pj.carried
    finally:
        world.clock.set(at("2026-04-02"))


def test_a_failed_settlement_is_in_the_agency_queue_until_written_off(world: World) -> None:
    r = world.record
    rx = r.settled_rx(JINAN, world.ids["HJ1"], world.ids["PJ"], at("2026-03-12"), "1.00", "0.00")
    case = r.case(SubjectKind.PRESCRIPTION, rx, at("2026-03-12", 4))
    case.fail(clock=FixedClock(at("2026-03-12", 4)), rule_id="R10", error="RuleViolation",
              reason="out-of-catalog drug without the patient's consent", trigger="settle:test")
    r.events += case.collect_events()
    r.rebuild()
    reads = world.reads()
    (issue,) = [i for i in reads.settlement_issues(JINAN) if i.subject_id == rx]
    assert (issue.rule_id, issue.open, issue.subject_kind) == ("R10", True, "prescription")
    assert not [i for i in reads.settlement_issues(CHANGCHUN) if i.subject_id == rx]  # another region's queue
    case.resolve(clock=FixedClock(at("2026-03-13")), resolution=FailureResolution.WRITTEN_OFF,
                 reason="not payable", resolved_by=f"agency:{JINAN}")
    r.events += case.collect_events()
    r.rebuild()
    assert not [i for i in reads.settlement_issues(JINAN) if i.subject_id == rx]
    (closed,) = [i for i in reads.settlement_issues(JINAN, open_only=False) if i.subject_id == rx]
    assert (closed.resolution, closed.resolved_by) == ("written_off", f"agency:{JINAN}")


def test_the_worker_records_what_it_cannot_settle_and_the_agency_retries_it(world: World) -> None:
    """Nothing silent: a settlement the worker cannot compute is a SettlementFailed on the subject's case (once per
    trigger), not a log line; the agency's retry resolves it and is itself a trigger of the worker."""
    from services.application.unit_of_work import UnitOfWork
    from services.domain.settlement_case import case_id
    from services.reference.policies import PolicyNotFound
    from services.workers.settlement import SettlementWorker

    r = world.record
    rx = r.settled_rx(JINAN, world.ids["HJ2"], world.ids["PJ"], at("2026-03-14"), "1.00", "0.00")
    r.save()
    worker = SettlementWorker(r.app)
    for _ in range(2):  # a redelivered trigger records nothing twice
        worker._failed(SubjectKind.PRESCRIPTION, rx, "settle:evt-14", PolicyNotFound("370100", "no policy file"))

    def case() -> SettlementCase:
        found = UnitOfWork(r.app.store).get(SettlementCase, case_id(SubjectKind.PRESCRIPTION, rx))
        assert found is not None
        return found

    assert case().failed and len(case().failures) == 1
    assert case().failures[0]["reason"] == "policy for region 370100: no policy file"
    outcome = r.app.handle(c.RetrySettlement(subject_kind=SubjectKind.PRESCRIPTION, subject_id=rx,
                                             reason="policy file deployed", acted_by=f"agency:{JINAN}"))
    assert outcome.ok, outcome.reason
    assert not case().failed
    again = r.app.handle(c.WriteOffSettlement(subject_kind=SubjectKind.PRESCRIPTION, subject_id=rx, reason="x"))
    assert (again.ok, again.error) == (False, "IllegalTransition")  # nothing open to write off
