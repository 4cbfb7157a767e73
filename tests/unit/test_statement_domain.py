"""Statements in memory: the deposit and payable arithmetic, the release rule, ids, and the CSV lines."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.statement import PartyKind, StatementIssued
from services.adapters.statement_render import CSV_COLUMNS, to_csv
from services.application.statements import ClosedStatement, PartyMonth
from services.domain.clock import FixedClock
from services.domain.errors import InvalidCommand
from services.domain.statement import (
    DepositRelease,
    DepositRule,
    Statement,
    StatementFigures,
    deposit_release_id,
    previous_month,
    project_statement,
    statement_id,
)

D = Decimal
CLOCK = FixedClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))


def figures(kind: PartyKind = PartyKind.PHYSICAL_INSTITUTION, gross: str = "75.00", refused: str = "6.00",
            clawed_back: str = "0.00") -> StatementFigures:
    return StatementFigures(party_id="INST-1", party_kind=kind, pooling_region="220100", month="2026-02",
                            gross=D(gross), refused=D(refused), clawed_back=D(clawed_back))


def test_a_hospital_statement_withholds_the_deposit_on_audited_fees() -> None:
    s = Statement.issue(clock=CLOCK, figures=figures(clawed_back="3.50"), deposit_rate=D("0.05"),
                        policy_version="2026.1")
    assert (s.withheld_deposit, s.payable) == (D("3.45"), D("62.05"))  # 5% of 69.00; 75 − 6 − 3.50 − 3.45
    (event,) = s.collect_events()
    assert isinstance(event, StatementIssued)
    assert event.originator_id == statement_id(PartyKind.PHYSICAL_INSTITUTION, "INST-1", "2026-02")
    assert project_statement(None, [event]) == s


def test_pharmacies_are_paid_in_full_and_may_owe_after_a_clawback() -> None:
    s = Statement.issue(clock=CLOCK, figures=figures(PartyKind.PHARMACY, gross="0.00", refused="0.00",
                                                     clawed_back="4.00"), deposit_rate=D("0.05"),
                        policy_version="2026.1")
    assert (s.withheld_deposit, s.payable) == (D("0.00"), D("-4.00"))


def test_the_deposit_rounds_half_up_once() -> None:
    assert Statement.withheld(PartyKind.HOSPITAL, D("0.90"), D("0.00"), D("0.05")) == D("0.05")  # 0.045
    assert Statement.withheld(PartyKind.HOSPITAL, D("5.00"), D("9.00"), D("0.05")) == D("0.00")  # never negative
    assert Statement.withheld(PartyKind.DELIVERY_ENTERPRISE, D("100.00"), D("0.00"), D("0.05")) == D("0.00")


@given(gross=st.integers(0, 10**9), refused=st.integers(0, 10**9), clawed=st.integers(0, 10**9))
def test_payable_always_adds_up(gross: int, refused: int, clawed: int) -> None:
    f = figures(gross=str(D(gross) / 100), refused=str(D(refused) / 100), clawed_back=str(D(clawed) / 100))
    s = Statement.issue(clock=CLOCK, figures=f, deposit_rate=D("0.05"), policy_version="2026.1")
    assert s.payable == s.gross - s.refused - s.clawed_back - s.withheld_deposit
    assert D(0) <= s.withheld_deposit <= max(s.gross - s.refused, D(0))


def test_the_statement_id_is_the_same_for_the_same_party_and_month() -> None:
    a = statement_id(PartyKind.PHARMACY, "PH-1", "2026-02")
    assert a == statement_id(PartyKind.PHARMACY, "PH-1", "2026-02")
    assert a != statement_id(PartyKind.PHARMACY, "PH-1", "2026-03")
    assert a != statement_id(PartyKind.DELIVERY_ENTERPRISE, "PH-1", "2026-02")


@pytest.mark.parametrize(("score", "share"), [(100, "1"), (90, "1"), (89, "0.89"), (75, "0.75"), (60, "0.6"),
                                              (59, "0"), (0, "0")])
def test_the_deposit_rule_by_score(score: int, share: str) -> None:
    assert DepositRule().share(score) == D(share)


def test_a_release_pays_the_share_of_the_year_and_is_keyed_by_party_and_year() -> None:
    r = DepositRelease.release(clock=CLOCK, party_id="INST-1", year=2026, withheld=D("4.45"), score=75,
                               assessment_ref="A-1")
    assert (r.amount, r.id) == (D("3.34"), deposit_release_id("INST-1", 2026))
    with pytest.raises(InvalidCommand):
        DepositRule().share(101)
    with pytest.raises(ValueError, match="partial_release_from"):
        DepositRule(full_release_from=50, partial_release_from=60)


def test_previous_month_crosses_the_year() -> None:
    assert (previous_month("2026-01"), previous_month("2026-03")) == ("2025-12", "2026-02")
    with pytest.raises(InvalidCommand):
        previous_month("2026-13")


def test_the_csv_has_one_row_per_line_and_the_payable_last() -> None:
    s = Statement.issue(clock=CLOCK, figures=figures(), deposit_rate=D("0.05"), policy_version="2026.1")
    detail = PartyMonth(party_id="INST-1", party_kind=PartyKind.PHYSICAL_INSTITUTION, month="2026-02",
                        fund=D("75.00"), refused=D("6.00"), prescriptions=2, drug_fees=D("100.00"),
                        members=(PartyMonth(party_id="H1", party_kind=PartyKind.HOSPITAL, month="2026-02",
                                            fund=D("75.00"), prescriptions=2),))
    rows = list(csv.DictReader(io.StringIO(to_csv([ClosedStatement(s, detail, "2026-01", D("0.05"), True)]))))
    assert tuple(rows[0]) == CSV_COLUMNS
    # issue 14 (DOMAIN.md, Settlement): the personal-account share is paid too (line 2), reversals (5) and carried
    # lines of closed months (6) are their own lines; the payable is line 8
    assert [r["line"] for r in rows] == ["1", "1.2", "1.3", "1.4", "1.5.1", "2", "3", "4", "5", "6", "7", "8"]
    totals = {r["line"]: D(r["amount"]) for r in rows if "." not in r["line"]}
    assert totals == {"1": D("75.00"), "2": D("0.00"), "3": D("-6.00"), "4": D("0.00"), "5": D("0.00"),
                      "6": D("0.00"), "7": D("-3.45"), "8": D("65.55")}
    assert sum(v for k, v in totals.items() if k != "8") == totals["8"]
    assert {r["party_id"] for r in rows} == {"INST-1"} and {r["period"] for r in rows} == {"2026-02"}
