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
        from projections.hospital_settlement import institution_statements, statements
        from projections.pharmacy_settlement import statements as pharmacy_statements

        with psycopg.connect(self.database_url) as conn:
            institutions = institution_statements(conn, self.hospital_schema, month=month,
                                                  physical_institution_id=party_id)
            hospitals = statements(conn, self.hospital_schema, month=month)
            pharmacies = pharmacy_statements(conn, self.pharmacy_schema, month=month, party_id=party_id)
        members: dict[str, list[PartyMonth]] = {}
        for h in hospitals:
            members.setdefault(h["physical_institution_id"], []).append(_hospital_month(h, PartyKind.HOSPITAL,
                                                                                        h["hospital_id"]))
        out = [_hospital_month(r, PartyKind.PHYSICAL_INSTITUTION, r["physical_institution_id"],
                               tuple(members.get(r["physical_institution_id"], ())))
               for r in institutions]
        out += [PartyMonth(
            party_id=r["party_id"], party_kind=PartyKind(r["party_kind"]), month=r["month"], fund=_money(r["fund"]),
            refused=_money(r["refused"]), clawed_back=_money(r["clawed_back"]), prescriptions=r["prescriptions"],
            drug_fees=_money(r["drug_fees"]), personal_account=_money(r["personal_account"]),
            self_pay=_money(r["self_pay"]), delivery_fees=_money(r["delivery_fees"]),
            withheld_deposit=_money(r["withheld_deposit"])) for r in pharmacies]
        return out


def _hospital_month(r: dict[str, Any], kind: PartyKind, party_id: str, members: tuple[PartyMonth, ...] = ()
                    ) -> PartyMonth:
    return PartyMonth(
        party_id=party_id, party_kind=kind, month=r["month"], fund=_money(r["fund"]), refused=_money(r["refused"]),
        clawed_back=_money(r["clawed_back"]), consultations=r["consultations"],
        consultation_fees=_money(r["consultation_fees"]), prescriptions=r["prescriptions"],
        drug_fees=_money(r["drug_fees"]), personal_account=_money(r["personal_account"]),
        self_pay=_money(r["self_pay"]), delivery_fees=_money(r["delivery_fees"]),
        withheld_deposit=_money(r["withheld_deposit"]), members=members)


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
