"""Hypothesis properties of the money flow (issue 14; DOMAIN.md, Settlement) over random month-long traffic:
settlements, refusals, clawbacks and reversals of several providers, booked in the China-time month of their event,
some of them late (in a month already closed), with months closed as time passes. The statement desk runs on
in-memory figures (what the settlement projections hold) and an in-memory event store.

For every provider and month: payable + withheld = fund + personal account − refused − clawed back − reversed
(carried lines included); the sum over providers is the agency's outflow; nothing is booked twice or lost (once every
month is closed, the statements add up to exactly what was recorded); each statement's own month equals the
projections' figures at the time it was closed; refusals, clawbacks and reversals never exceed what was paid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.statement import PartyKind
from services.application.statements import PartyMonth, StatementDesk
from services.domain.clock import FixedClock
from services.domain.settlement import to_fen
from services.domain.statement import DEPOSIT_PARTY_KINDS, Statement

D = Decimal
ZERO = D("0.00")
MONTHS = ("2026-01", "2026-02", "2026-03", "2026-04")
PARTIES = ((PartyKind.PHYSICAL_INSTITUTION, "PJ-1", "370100"), (PartyKind.PHYSICAL_INSTITUTION, "PC-1", "220100"),
           (PartyKind.PHARMACY, "PH-1", "220100"), (PartyKind.DELIVERY_ENTERPRISE, "DJ-1", "370100"))
RATE = {"370100": D("0.05"), "220100": ZERO}  # the regions' provider terms (services/reference/policies)
COLUMNS = ("fund", "personal_account", "refused", "clawed_back", "reversed")


@dataclass
class Books:
    """What the settlement projections hold: sums per (party kind, party, month)."""

    rows: dict[tuple[PartyKind, str, str], dict[str, Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(COLUMNS, ZERO)))
    source: str = "memory"

    def book(self, kind: PartyKind, party: str, month: str, **amounts: Decimal) -> None:
        row = self.rows[(kind, party, month)]
        for column, amount in amounts.items():
            row[column] += amount

    def _months(self, keep: Any, party_id: str | None) -> list[PartyMonth]:
        return [PartyMonth(party_id=p, party_kind=k, month=m, fund=r["fund"], personal_account=r["personal_account"],
                           refused=r["refused"], clawed_back=r["clawed_back"], reversed=r["reversed"])
                for (k, p, m), r in sorted(self.rows.items(), key=lambda i: (i[0][0].value, i[0][1], i[0][2]))
                if keep(m) and (party_id is None or p == party_id)]

    def month(self, month: str, party_id: str | None = None) -> list[PartyMonth]:
        return self._months(lambda m: m == month, party_id)

    def before(self, month: str, party_id: str | None = None) -> list[PartyMonth]:
        return self._months(lambda m: m < month, party_id)


class Directory:
    def regions(self, parties: Any) -> dict[tuple[PartyKind, str], str]:
        return {(k, p): region for k, p, region in PARTIES}


class MemoryStore:
    """The part of the event store the desk uses: save an aggregate's events, load it back."""

    def __init__(self) -> None:
        self.streams: dict[UUID, list[Any]] = {}

    def save(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self.streams.setdefault(aggregate.id, []).extend(aggregate.collect_events())

    def load(self, cls: Any, aggregate_id: UUID, projector: Any) -> Any:
        events = self.streams.get(aggregate_id)
        return projector(None, events) if events else None


@dataclass
class Settlement:
    kind: PartyKind
    party: str
    fund: Decimal
    personal_account: Decimal
    taken: Decimal = ZERO

    @property
    def paid(self) -> Decimal:
        return self.fund + self.personal_account


cents = st.integers(min_value=0, max_value=50_000).map(lambda n: D(n) / 100)
settle_op = st.tuples(st.just("settle"), st.integers(0, len(PARTIES) - 1), cents, cents)
take_op = st.tuples(st.sampled_from(["refuse", "claw_back", "reverse"]), st.integers(0, 10_000),
                    st.integers(1, 100), st.booleans())
close_op = st.tuples(st.just("close"), st.just(0), st.just(0), st.just(False))
traffic = st.lists(st.one_of(settle_op, take_op, close_op), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic)
def test_statements_conserve_money_over_random_month_long_traffic(ops: list[tuple[Any, ...]]) -> None:
    books, store = Books(), MemoryStore()
    clock = FixedClock(datetime(2026, 1, 15, 2, 0, tzinfo=UTC))
    desk = StatementDesk(store, books, Directory(), clock)  # type: ignore[arg-type]
    settlements: list[Settlement] = []
    recorded: dict[tuple[PartyKind, str], Decimal] = defaultdict(lambda: ZERO)
    open_month = 0  # MONTHS[open_month] is the current month; the ones before are closed
    statements: list[Statement] = []
    at_close: dict[tuple[PartyKind, str, str], dict[str, Decimal]] = {}

    def close(index: int) -> None:
        month = MONTHS[index] if index < len(MONTHS) else f"2026-{index + 1:02d}"
        clock.set(datetime(2026, index + 2, 1, 2, 0, tzinfo=UTC))
        snapshot = {key: dict(row) for key, row in books.rows.items() if key[2] == month}
        for closed in desk.close_month(month):
            assert closed.created
            s = closed.statement
            statements.append(s)
            at_close[(s.party_kind, s.party_id, s.month)] = snapshot.get(
                (s.party_kind, s.party_id, s.month), dict.fromkeys(COLUMNS, ZERO))

    for name, a, b, late in ops:
        month = MONTHS[min(open_month, len(MONTHS) - 1)]
        if name == "close":
            if open_month < len(MONTHS) - 1:
                close(open_month)
                open_month += 1
            continue
        if name == "settle":
            kind, party, _ = PARTIES[a]
            s = Settlement(kind, party, b, D(ops.index((name, a, b, late)) % 7))  # personal account 0–6 yuan
            settlements.append(s)
            books.book(kind, party, month, fund=s.fund, personal_account=s.personal_account)
            recorded[(kind, party)] += s.paid
            continue
        if not settlements:
            continue
        s = settlements[a % len(settlements)]
        left = s.paid - s.taken
        amount = to_fen(left * b / 100)
        if amount <= ZERO:
            continue
        # a late event: booked in the month before the open one (already closed), as consumer lag does
        when = MONTHS[open_month - 1] if late and open_month > 0 else month
        column = {"refuse": "refused", "claw_back": "clawed_back", "reverse": "reversed"}[name]
        books.book(s.kind, s.party, when, **{column: amount})
        s.taken += amount
        recorded[(s.kind, s.party)] -= amount
        assert s.taken <= s.paid  # bounded by what insurance paid
    for index in range(open_month, len(MONTHS) + 1):  # close the rest, and one more month to carry late events
        close(index)

    outflow = ZERO
    for s in statements:
        carried = sum((line.net for line in s.carried), ZERO)
        audited = s.gross + s.personal_account - s.refused - s.reversed + sum(
            (line.fund + line.personal_account - line.refused - line.reversed for line in s.carried), ZERO)
        # per provider and month
        assert s.payable + s.withheld_deposit == (s.gross + s.personal_account - s.refused - s.clawed_back
                                                  - s.reversed + carried)
        rate = RATE[s.pooling_region] if s.party_kind in DEPOSIT_PARTY_KINDS else ZERO
        assert s.withheld_deposit == to_fen(max(audited, ZERO) * rate) >= ZERO
        assert s.owed_by_party == (s.payable < ZERO)
        # the statement's own month is what the projections held when it was closed
        own = at_close[(s.party_kind, s.party_id, s.month)]
        assert (s.gross, s.personal_account, s.refused, s.clawed_back, s.reversed) == tuple(own[c] for c in COLUMNS)
        assert all(line.month < s.month for line in s.carried)
        outflow += s.payable + s.withheld_deposit
    # nothing lost, nothing twice: per provider, the statements book exactly what was recorded
    per_party: dict[tuple[PartyKind, str], Decimal] = defaultdict(lambda: ZERO)
    for s in statements:
        per_party[(s.party_kind, s.party_id)] += s.payable + s.withheld_deposit
    assert {k: v for k, v in per_party.items() if v} == {k: v for k, v in recorded.items() if v}
    # the sum over providers is the agency's outflow (payable) plus what it holds as deposits
    assert outflow == sum(recorded.values(), ZERO)
    assert sum((s.payable for s in statements), ZERO) == outflow - sum((s.withheld_deposit for s in statements), ZERO)
    # each (party, month) is closed at most once
    assert len({(s.party_kind, s.party_id, s.month) for s in statements}) == len(statements)
