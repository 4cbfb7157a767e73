"""Where closing a month reads from: the settlement projections' figures and each party's pooling region
(implementations of ``services.application.ports.SettlementFigures`` and ``PartyDirectory``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from events.base import ZERO
from events.statement import PartyKind
from services.adapters.store import EVENTS_TABLE
from services.application.statements import PartyMonth


def _money(value: Any) -> Decimal:
    return ZERO if value is None else Decimal(value).quantize(Decimal("0.01"))


@dataclass
class ProjectionFigures:
    """The settlement projections' schemas on one database."""

    database_url: str
    hospital_schema: str = "hospital_settlement"
    pharmacy_schema: str = "pharmacy_settlement"
    source: str = "projections"

    def month(self, month: str, party_id: str | None = None) -> list[PartyMonth]:
        return self._read("month", month, party_id)

    def before(self, month: str, party_id: str | None = None) -> list[PartyMonth]:
        return self._read("before", month, party_id)

    def _read(self, how: str, month: str, party_id: str | None) -> list[PartyMonth]:
        """The institutions' roll-ups (with their hospitals as members) and the pharmacy-side parties."""
        from psycopg.rows import dict_row

        hs, ps = sql.Identifier(self.hospital_schema), sql.Identifier(self.pharmacy_schema)
        cmp = sql.SQL("=") if how == "month" else sql.SQL("<")

        def party(column: sql.Identifier) -> sql.Composable:
            return sql.SQL("true") if party_id is None else sql.SQL("{} = %(party)s").format(column)
        args = {"month": month, "party": party_id}
        with psycopg.connect(self.database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.SQL("SELECT * FROM {}.institution_statements WHERE month {} %(month)s AND {}"
                                " ORDER BY physical_institution_id, month").format(
                hs, cmp, party(sql.Identifier("physical_institution_id"))), args)
            institutions = cur.fetchall()
            cur.execute(sql.SQL("SELECT * FROM {}.statements WHERE month {} %(month)s AND {}"
                                " ORDER BY hospital_id, month").format(
                hs, cmp, party(sql.Identifier("physical_institution_id"))), args)
            hospitals = cur.fetchall()
            cur.execute(sql.SQL("SELECT * FROM {}.statements WHERE month {} %(month)s AND {}"
                                " ORDER BY party_id, party_kind, month").format(
                ps, cmp, party(sql.Identifier("party_id"))), args)
            pharmacies = cur.fetchall()
        members: dict[tuple[str, str], list[PartyMonth]] = {}
        for h in hospitals:
            members.setdefault((h["physical_institution_id"], h["month"]), []).append(
                _month(h, PartyKind.HOSPITAL, h["hospital_id"]))
        out = [_month(r, PartyKind.PHYSICAL_INSTITUTION, r["physical_institution_id"],
                      tuple(members.get((r["physical_institution_id"], r["month"]), ())))
               for r in institutions]
        out += [_month(r, PartyKind(r["party_kind"]), r["party_id"]) for r in pharmacies]
        return out


def _month(r: dict[str, Any], kind: PartyKind, party_id: str, members: tuple[PartyMonth, ...] = ()) -> PartyMonth:
    return PartyMonth(
        party_id=party_id, party_kind=kind, month=r["month"], fund=_money(r["fund"]), refused=_money(r["refused"]),
        clawed_back=_money(r["clawed_back"]), reversed=_money(r.get("reversed")),
        consultations=r.get("consultations") or 0, consultation_fees=_money(r.get("consultation_fees")),
        prescriptions=r["prescriptions"], drug_fees=_money(r["drug_fees"]),
        personal_account=_money(r["personal_account"]), self_pay=_money(r["self_pay"]),
        delivery_fees=_money(r["delivery_fees"]), members=members)


_REGION_SOURCES: dict[PartyKind, list[tuple[str, str]]] = {
    # (stored event topic, JSON field naming the party); the event's ``pooling_region`` is the party's region
    PartyKind.PHYSICAL_INSTITUTION: [("events.encounter:FollowUpVisitRecorded", "physical_institution_id"),
                                     ("events.prescription:PrescriptionIssued", "physical_institution_id")],
    PartyKind.HOSPITAL: [("events.encounter:FollowUpVisitRecorded", "hospital_id")],
    PartyKind.PHARMACY: [("events.registries:PharmacyDesignated", "pharmacy_id")],
}


_BY_TOPIC = sql.SQL(
    "SELECT DISTINCT ON (party) party, region FROM (SELECT convert_from(state, 'UTF8')::jsonb ->> %s AS party,"
    " convert_from(state, 'UTF8')::jsonb ->> 'pooling_region' AS region FROM {t} WHERE topic = %s) e"
    " WHERE party = ANY(%s)")
_DELIVERY = sql.SQL(
    "SELECT DISTINCT ON (party) party, convert_from(i.state, 'UTF8')::jsonb ->> 'pooling_region' FROM"
    " (SELECT originator_id, convert_from(state, 'UTF8')::jsonb ->> 'delivery_enterprise_id' AS party FROM {t}"
    " WHERE topic = 'events.prescription:DeliveryArranged') d"
    " JOIN {t} i ON i.originator_id = d.originator_id AND i.originator_version = 1 WHERE party = ANY(%s)")


@dataclass
class EventStoreDirectory:
    """Each party's pooling region, read from the event store (the projections do not carry it).

    Institutions and hospitals: their visits' ``pooling_region``; pharmacies: their designation; a delivery
    enterprise: the region of the prescriptions it delivered.
    """

    database_url: str
    table: str = EVENTS_TABLE

    def regions(self, parties: Iterable[tuple[PartyKind, str]]) -> dict[tuple[PartyKind, str], str]:
        wanted: dict[PartyKind, set[str]] = {}
        for kind, party in parties:
            wanted.setdefault(kind, set()).add(party)
        found: dict[tuple[PartyKind, str], str] = {}
        table = sql.Identifier(self.table)
        with psycopg.connect(self.database_url) as conn:
            for kind, ids in wanted.items():
                for topic, key in _REGION_SOURCES.get(kind, []):
                    missing = [i for i in ids if (kind, i) not in found]
                    if not missing:
                        break
                    rows = conn.execute(_BY_TOPIC.format(t=table), (key, topic, missing)).fetchall()
                    found.update({(kind, r[0]): r[1] for r in rows})
                if kind is PartyKind.DELIVERY_ENTERPRISE:
                    rows = conn.execute(_DELIVERY.format(t=table), (list(ids),)).fetchall()
                    found.update({(kind, r[0]): r[1] for r in rows})
        return found
