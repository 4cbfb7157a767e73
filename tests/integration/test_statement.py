"""Monthly statements on real PostgreSQL: settlements, refusals and clawbacks of three months written to the event
store as the settlement worker and the agency record them, the settlement projections rebuilt from the event store
(their own code), then months closed. Statements agree with the projections, closing twice records nothing, and the
PDF says what the CSV says.

Worked figures (Changchun 220100: its provider terms withhold no deposit and pay the pharmacy; DOMAIN.md, Settlement
— issue 14: the agency pays fund + personal account, refusals and clawbacks count in the month they are recorded):

2026-02  institution INST (hospitals H1, H2): consultation (10.00, Changchun's tertiary price, R15) 5.00 + 3.00
         + H1 rx1 35.00 + 10.00 + H2 rx3 30.00 + 15.00 = fund 70.00 + personal account 28.00, refused (rx3) 6.00,
         clawed back from rx1 3.50, no deposit → payable 88.50. Pharmacy PH: rx2 40.00 + 5.00 in full → 45.00.
2026-03  INST: rx4 20.00 + 20.00 → 40.00. PH: nothing settled, a clawback of 4.00 on rx2 → payable −4.00 (owed by
         the pharmacy, and the statement says so).
2026-04  nothing: no statement.
(Before issue 14 these were 65.55 / 40.00 / 15.50 / 0.00 / −4.00 in April: fund only, a 5% deposit in every region,
clawbacks the month after.)
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from events.statement import PartyKind
from projections.hospital_settlement import institution_statements
from projections.pharmacy_settlement import statements as pharmacy_statements
from services.adapters.statement_figures import EventStoreDirectory, ProjectionFigures
from services.adapters.statement_render import find_font, to_csv, to_pdf
from services.application import RxTrail
from services.application.outcomes import Outcome
from services.application.statements import ClosedStatement, StatementDesk
from services.bootstrap import build_application
from services.domain.clock import FixedClock
from services.domain.errors import InvalidCommand
from services.infra.settings import Settings
from tests.support import unique_id
from tests.support.money import SettlementRecord

CHANGCHUN = "220100"
SECRET = b"rxtrail-statement-test-secret-0123456789"
METFORMIN = "XA10BAA001A001030101"
D = Decimal


def ok(outcome: Outcome) -> UUID:
    if not outcome.ok or outcome.aggregate_id is None:
        raise AssertionError(f"expected ok, got {outcome.error} {outcome.rule_id}: {outcome.reason}")
    return outcome.aggregate_id


def at(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T02:00:00+00:00")  # 10:00 China time


@dataclass
class Books:
    app: RxTrail
    clock: FixedClock
    db: str
    institution: str
    hospitals: tuple[str, str]
    pharmacy: str

    def events(self) -> int:
        with psycopg.connect(self.db) as conn:
            row = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
        return int(row[0]) if row else 0

    def desk(self) -> StatementDesk:
        return StatementDesk(self.app.store, ProjectionFigures(self.db), EventStoreDirectory(self.db), self.clock)


@pytest.fixture(scope="module")
def books(make_database: Callable[[], str]) -> Iterator[Books]:
    """The settlement record (tests.support.money: what the settlement worker and the agency record) written to the
    event store; the issue, review and dispense rules have their own suites."""
    db = make_database()
    clock = FixedClock(at("2026-02-10"))
    app = build_application(Settings(database_url=db, pseudonym_secret=SECRET), clock=clock)
    b = Books(app, clock, db, unique_id("INST"), (unique_id("H1"), unique_id("H2")), unique_id("PH"))
    r = SettlementRecord(app, db)
    h1, h2 = b.hospitals
    r.pharmacy(b.pharmacy, CHANGCHUN, at("2026-01-02"))
    # February
    visit = r.visit(CHANGCHUN, h1, b.institution, at("2026-02-10"))  # 10.00: Changchun's tertiary price (R15)
    r.consultation(visit, at("2026-02-10"), "5.00", "3.00", "2.00", b.institution)
    rx1 = r.settled_rx(CHANGCHUN, h1, b.institution, at("2026-02-10"), "35.00", "10.00", "5.00")
    rx2 = r.settled_rx(CHANGCHUN, h2, b.institution, at("2026-02-10"), "40.00", "5.00", "5.00", pharmacy=b.pharmacy)
    rx3 = r.settled_rx(CHANGCHUN, h2, b.institution, at("2026-02-10"), "30.00", "15.00", "5.00")
    r.refuse(rx3, "6.00", at("2026-02-20"))
    r.claw_back(rx1, "3.50", at("2026-02-25"))
    # March
    r.settled_rx(CHANGCHUN, h1, b.institution, at("2026-03-05"), "20.00", "20.00", "10.00")
    r.claw_back(rx2, "4.00", at("2026-03-10"))
    r.rebuild()  # the projections, rebuilt from the event store by their own code
    clock.set(at("2026-05-02"))
    yield b
    app.close()


def by_party(closed: list[ClosedStatement]) -> dict[str, ClosedStatement]:
    return {s.statement.party_id: s for s in closed}


def figures(s: ClosedStatement) -> tuple[Decimal, ...]:
    st = s.statement
    return st.gross, st.personal_account, st.refused, st.clawed_back, st.withheld_deposit, st.payable


def test_months_close_with_the_worked_figures_and_agree_with_the_projections(books: Books) -> None:
    desk = books.desk()
    feb = by_party(desk.close_month("2026-02"))
    mar = by_party(desk.close_month("2026-03"))
    apr = by_party(desk.close_month("2026-04"))

    assert set(feb) == {books.institution, books.pharmacy}
    assert feb[books.institution].statement.party_kind is PartyKind.PHYSICAL_INSTITUTION
    assert figures(feb[books.institution]) == (D("70.00"), D("28.00"), D("6.00"), D("3.50"), D("0.00"), D("88.50"))
    assert figures(feb[books.pharmacy]) == (D("40.00"), D("5.00"), D("0.00"), D("0.00"), D("0.00"), D("45.00"))
    assert figures(mar[books.institution]) == (D("20.00"), D("20.00"), D("0.00"), D("0.00"), D("0.00"), D("40.00"))
    assert figures(mar[books.pharmacy]) == (D("0.00"), D("0.00"), D("0.00"), D("4.00"), D("0.00"), D("-4.00"))
    assert mar[books.pharmacy].statement.owed_by_party and not mar[books.institution].statement.owed_by_party
    assert apr == {}
    for s in [*feb.values(), *mar.values()]:
        assert s.statement.pooling_region == CHANGCHUN and s.statement.policy_version == "2026.1"
        assert s.statement.deposit_rate == D("0.00") and s.statement.carried == ()

    # every statement equals the projections: the month's fund, personal account, refusals, clawbacks, reversals
    with psycopg.connect(books.db) as conn:
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in institution_statements(conn, physical_institution_id=books.institution):
            rows[(r["physical_institution_id"], r["month"])] = r
        for r in pharmacy_statements(conn, party_id=books.pharmacy):
            rows[(r["party_id"], r["month"])] = r
    for month, closed in (("2026-02", feb), ("2026-03", mar)):
        for party, s in closed.items():
            this, st = rows[(party, month)], s.statement
            assert (st.gross, st.personal_account, st.refused, st.clawed_back, st.reversed) == (
                this["fund"], this["personal_account"], this["refused"], this["clawed_back"], this["reversed"])
            assert st.payable + st.withheld_deposit == this["insured_net"]
    # over the months closed, everything the projections hold is paid, withheld or deducted exactly once
    closed_all = [*feb.values(), *mar.values()]
    assert sum(s.statement.payable + s.statement.withheld_deposit for s in closed_all) == sum(
        r["insured_net"] for r in rows.values())


def test_closing_a_month_twice_records_nothing(books: Books) -> None:
    desk = books.desk()
    first = desk.close_month("2026-02")
    before = books.events()
    again = desk.close_month("2026-02")
    assert books.events() == before
    assert [s.created for s in again] == [False] * len(again)
    assert [s.statement.id for s in again] == [s.statement.id for s in first]
    assert all(s.drift is None for s in again)
    with pytest.raises(InvalidCommand):
        desk.close_month("2026-05")  # not over yet


def test_the_deposit_is_released_once_by_the_assessment_score(books: Books) -> None:
    desk = books.desk()
    desk.close_month("2026-02")
    desk.close_month("2026-03")
    with pytest.raises(InvalidCommand):
        desk.release_deposit(books.institution, 2026, 75, "ASSESS-2026")  # the year is not over
    books.clock.set(at("2027-01-15"))
    try:
        # Changchun withholds no deposit (its provider terms; issue 14): the release is of 0.00 — the Jinan month
        # with a 5% deposit and its release are tests/integration/test_r15_money_statements.py
        release, withheld, created = desk.release_deposit(books.institution, 2026, 75, "ASSESS-2026")
        assert (withheld, release.amount, created) == (D("0.00"), D("0.00"), True)
        assert release.assessment_ref == "ASSESS-2026 (score 75/100)"
        before = books.events()
        again, _, created_again = desk.release_deposit(books.institution, 2026, 95, "ASSESS-2026-bis")
        assert (again.amount, created_again, books.events()) == (D("0.00"), False, before)
    finally:
        books.clock.set(at("2026-05-02"))


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    if shutil.which("pdftotext"):
        path = tmp_path / "statement.pdf"
        path.write_bytes(pdf)
        return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                              check=True).stdout
    from pypdf import PdfReader

    return "\f".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_pdf_says_what_the_csv_says(books: Books, tmp_path: Path) -> None:
    closed = books.desk().close_month("2026-02") + books.desk().close_month("2026-03")
    csv_text = to_csv(closed)
    text = pdf_text(to_pdf(closed), tmp_path).replace(",", "")
    payable_rows = [line.split(",") for line in csv_text.splitlines() if ",8,Payable" in line]
    assert len(payable_rows) == len(closed) == 4
    pages = text.split("\f")
    for row, page in zip(payable_rows, pages, strict=False):
        party, period, amount = row[2], row[4], row[8]
        assert party in page and period in page
        assert re.search(rf"Payable.*\s{re.escape(amount)}\s*$", page, re.MULTILINE), (amount, page)
        assert "Personal-account share" in page and "reversed" in page and "Carried from closed months" in page
    for closed_one, page in zip(closed, pages, strict=False):
        gross = f"{closed_one.statement.gross:.2f}"
        assert re.search(rf"\(gross\).*\s{re.escape(gross)}\s*$", page, re.MULTILINE)
    if find_font() is not None:
        assert "应拨付金额" in text and "月度结算单" in text
    assert "88.50" in text and "-4.00" in text and "owed by the party" in text


def test_the_cli_prints_the_statements_as_csv(books: Books, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    monkeypatch.setenv("RXTRAIL_DATABASE_URL", books.db)
    books.desk().close_month("2026-02")
    before = books.events()
    result = CliRunner().invoke(app, ["statement", "--month", "2026-02", "--party", books.institution])
    assert result.exit_code == 0, result.output
    assert f"{books.institution},{CHANGCHUN},2026-02,8,Payable,应拨付金额,88.50," in result.stdout
    pdf = tmp_path / "inst.pdf"
    result = CliRunner().invoke(app, ["statement", "--month", "2026-02", "--party", books.institution,
                                      "--format", "pdf", "--out", str(pdf)])
    assert result.exit_code == 0, result.output
    assert "88.50" in pdf_text(pdf.read_bytes(), tmp_path)
    assert books.events() == before  # closed already: the CLI only printed it
