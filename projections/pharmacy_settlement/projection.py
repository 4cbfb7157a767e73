"""Pharmacy settlement: what the agency owes each designated retail pharmacy — or, where the region's policy says
so, the supply/delivery enterprise (Jinan, 004 §六) — for routed prescriptions, per month.

The party is the settlement's ``payee_id`` (``PrescriptionSettled``; the settlement worker sets it from the
treatment region's provider terms): the delivery enterprise when it is the one that delivered, else the pharmacy.
They are paid the month's circulation drug fees in full, fund + personal account: no deposit is withheld
(DOMAIN.md, Settlement; 003 art. 20). Booked per party and settlement month (China Standard Time): drug fees of
prescriptions settled with ``settled_with_kind = pharmacy`` and their split, fees refused in audit, clawed back and
reversed (``SettlementReversed``) in the month of their event, against the party the prescription was settled with.
Delivery fees are shown on their own: never in the fund share, nor in ``self_pay`` (the drugs' self-pay).
``insured_net = fund + personal_account − refused − clawed_back − reversed``.

The same sums are also booked per pooling region (``region_monthly``, view ``region_statements``): a line's region
is its prescription's ``pooling_region`` (the treatment region, whose agency settles with the pharmacy: see
``projections.hospital_settlement.projection``), so a delivery enterprise serving several regions shows each
agency only its region's lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.prescription import (
    DeliveryArranged,
    DispenserKind,
    FeesClawedBack,
    FeesRefusedInAudit,
    PrescriptionIssued,
    PrescriptionRouted,
    PrescriptionSettled,
)
from events.statement import PartyKind, SettlementReversed, SubjectKind
from projections.base import Delivered, event_types
from projections.hospital_settlement.ledger import (
    ZERO,
    add_deltas,
    select_view,
    settlement_month,
    upsert_rows,
)

MONTHLY_KEYS = ("party_id", "party_kind", "month")
MONTHLY_SUMS = ("prescriptions", "drug_fees", "fund", "personal_account", "self_pay", "delivery_fees", "refused",
                "clawed_back", "reversed")
_MONTHLY_TYPES = (*(["text"] * len(MONTHLY_KEYS)), *("int" if c == "prescriptions" else "numeric" for c in MONTHLY_SUMS))
_LOOKUP_COLUMNS = ("dispenser_kind", "dispenser_id", "delivery_enterprise_id", "party_id", "party_kind",
                   "pooling_region")
REGION_KEYS = ("pooling_region", *MONTHLY_KEYS)
_RELEVANT = (PrescriptionIssued, PrescriptionRouted, DeliveryArranged, PrescriptionSettled, FeesRefusedInAudit,
             FeesClawedBack)
_CASE_EVENTS = (SettlementReversed,)


@dataclass
class _Rx:
    dispenser_kind: str | None = None
    dispenser_id: str | None = None
    delivery_enterprise_id: str | None = None
    party_id: str | None = None
    party_kind: str | None = None
    pooling_region: str | None = None  # None: booked before the projection kept regions (a rebuild fills it)

    def row(self, rx_id: UUID) -> tuple[Any, ...]:
        return (rx_id, self.dispenser_kind, self.dispenser_id, self.delivery_enterprise_id, self.party_id,
                self.party_kind, self.pooling_region)


class PharmacySettlement:
    """The pharmacy settlement projection (schema ``pharmacy_settlement`` by default)."""

    name = "pharmacy_settlement"
    reads = event_types(*_RELEVANT, *_CASE_EVENTS)


    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        money = "numeric(16,2) NOT NULL DEFAULT 0"
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, dispenser_kind text,"
            " dispenser_id text, delivery_enterprise_id text, party_id text, party_kind text)").format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.monthly (party_id text, party_kind text, month text,"
            " prescriptions int NOT NULL DEFAULT 0, drug_fees " + money + ", fund " + money + ","
            " personal_account " + money + ", self_pay " + money + ", delivery_fees " + money + ","
            " refused " + money + ", clawed_back " + money + ", PRIMARY KEY (party_id, party_kind, month))"
        ).format(s))
        conn.execute(sql.SQL("ALTER TABLE {}.prescriptions ADD COLUMN IF NOT EXISTS pooling_region text").format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.region_monthly (pooling_region text, party_id text, party_kind text,"
            " month text, prescriptions int NOT NULL DEFAULT 0, drug_fees " + money + ", fund " + money + ","
            " personal_account " + money + ", self_pay " + money + ", delivery_fees " + money + ","
            " refused " + money + ", clawed_back " + money + ","
            " PRIMARY KEY (pooling_region, party_id, party_kind, month))").format(s))
        for table in ("monthly", "region_monthly"):
            conn.execute(sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS reversed " + money).format(
                s, sql.Identifier(table)))
        sums = ("prescriptions, drug_fees, fund, personal_account, self_pay, delivery_fees, refused, clawed_back,"
                " reversed, fund + personal_account - refused - clawed_back - reversed AS insured_net")
        for view in ("statements", "region_statements"):
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}.{}").format(s, sql.Identifier(view)))
        conn.execute(sql.SQL("CREATE VIEW {s}.statements AS SELECT party_id, party_kind, month, " + sums
                             + " FROM {s}.monthly").format(s=s))
        conn.execute(sql.SQL("CREATE VIEW {s}.region_statements AS SELECT pooling_region, party_id, party_kind,"
                             " month, " + sums + " FROM {s}.region_monthly").format(s=s))

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        wanted = {d.aggregate_id for d in batch if isinstance(d.event, _RELEVANT)}
        wanted |= {d.event.subject_id for d in batch
                   if isinstance(d.event, _CASE_EVENTS) and d.event.subject_kind is SubjectKind.PRESCRIPTION}
        if not wanted:
            return
        rxs: dict[UUID, _Rx] = {}
        for row in conn.execute(sql.SQL(
                "SELECT prescription_id, dispenser_kind, dispenser_id, delivery_enterprise_id, party_id, party_kind,"
                " pooling_region FROM {}.prescriptions WHERE prescription_id = ANY(%s)").format(sql.Identifier(schema)),
                (list(wanted),)):
            rxs[row[0]] = _Rx(*row[1:])
        changed: set[UUID] = set()
        months: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}

        def month(party_id: str, party_kind: str, d: Delivered, rx_id: UUID | None = None) -> dict[str, Any]:
            key = (party_id, party_kind, rxs[rx_id or d.aggregate_id].pooling_region, settlement_month(d.timestamp))
            if (m := months.get(key)) is None:
                m = months[key] = {c: 0 if c == "prescriptions" else ZERO for c in MONTHLY_SUMS}
            return m

        for d in batch:
            e = d.event
            if isinstance(e, SettlementReversed):
                if e.subject_kind is SubjectKind.PRESCRIPTION and (r := rxs.get(e.subject_id)) is not None \
                        and r.party_id is not None and r.party_kind is not None:
                    month(r.party_id, r.party_kind, d, e.subject_id)["reversed"] += e.fund + e.personal_account
                continue
            if not isinstance(e, _RELEVANT):
                continue
            rx = rxs.setdefault(d.aggregate_id, _Rx())
            if isinstance(e, PrescriptionIssued):
                rx.pooling_region = e.pooling_region
                changed.add(d.aggregate_id)
            elif isinstance(e, PrescriptionRouted):
                rx.dispenser_kind, rx.dispenser_id = e.dispenser_kind.value, e.dispenser_id
                changed.add(d.aggregate_id)
            elif isinstance(e, DeliveryArranged):
                rx.delivery_enterprise_id = e.delivery_enterprise_id
                changed.add(d.aggregate_id)
            elif isinstance(e, PrescriptionSettled):
                if e.settled_with_kind is not DispenserKind.PHARMACY:
                    continue
                if e.payee_id is not None and e.payee_id == rx.delivery_enterprise_id:
                    rx.party_id, rx.party_kind = rx.delivery_enterprise_id, PartyKind.DELIVERY_ENTERPRISE.value
                else:
                    rx.party_id, rx.party_kind = e.settled_with, PartyKind.PHARMACY.value
                changed.add(d.aggregate_id)
                m = month(rx.party_id, rx.party_kind, d)
                m["prescriptions"] += 1
                m["drug_fees"] += e.total - e.delivery_fee
                m["fund"] += e.fund
                m["personal_account"] += e.personal_account
                m["self_pay"] += e.self_pay - e.delivery_fee
                m["delivery_fees"] += e.delivery_fee
            elif rx.party_id is not None and rx.party_kind is not None:  # settled with a pharmacy-side party
                m = month(rx.party_id, rx.party_kind, d)
                m["refused" if isinstance(e, FeesRefusedInAudit) else "clawed_back"] += e.amount

        upsert_rows(conn, schema, "prescriptions", ("prescription_id",), _LOOKUP_COLUMNS,
                    [rxs[i].row(i) for i in changed], ("uuid", *(["text"] * 6)))
        whole: dict[tuple[str, str, str], dict[str, Any]] = {}
        for (party_id, party_kind, _, mon), m in months.items():
            w = whole.setdefault((party_id, party_kind, mon), {c: 0 if c == "prescriptions" else ZERO
                                                               for c in MONTHLY_SUMS})
            for c in MONTHLY_SUMS:
                w[c] += m[c]
        add_deltas(conn, schema, "monthly", MONTHLY_KEYS, MONTHLY_SUMS,
                   [(*k, *(m[c] for c in MONTHLY_SUMS)) for k, m in whole.items()], _MONTHLY_TYPES)
        add_deltas(conn, schema, "region_monthly", REGION_KEYS, MONTHLY_SUMS,
                   [(region, party_id, party_kind, mon, *(m[c] for c in MONTHLY_SUMS))
                    for (party_id, party_kind, region, mon), m in months.items() if region is not None],
                   ("text", *_MONTHLY_TYPES))


def statements(conn: psycopg.Connection[Any], schema: str = PharmacySettlement.name, *, month: str | None = None,
               party_id: str | None = None) -> list[dict[str, Any]]:
    """Pharmacy / delivery-enterprise statements (one row per party and month)."""
    return select_view(conn, schema, "statements", ("party_id", "party_kind", "month"),
                       {"month": month, "party_id": party_id})


def region_statements(conn: psycopg.Connection[Any], schema: str = PharmacySettlement.name, *, pooling_region: str,
                      month: str | None = None) -> list[dict[str, Any]]:
    """Pharmacy / delivery-enterprise statements of one pooling region's lines only (one row per party and month)."""
    return select_view(conn, schema, "region_statements", ("party_id", "party_kind", "month"),
                       {"pooling_region": pooling_region, "month": month})
