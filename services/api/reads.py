"""What parties read, straight from the event store (the record of truth).

Lists find aggregate ids with indexed-by-position scans of ``rxtrail_events`` and then load the aggregates,
so a list never disagrees with what a command will be checked against. The pharmacy feed walks the
notification log from a cursor; regulators' searches look inside the stored JSON. When the traceability
projection carries these lookups, these queries can move there without changing the HTTP layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from projections.hospital_settlement.projection import HospitalSettlement
from projections.hospital_settlement.projection import statements as hospital_statements
from projections.pharmacy_settlement.projection import PharmacySettlement
from projections.pharmacy_settlement.projection import statements as pharmacy_statements
from services.adapters.event_log import load_stream
from services.adapters.store import EVENTS_TABLE, RxTrailStore
from services.api import models as m
from services.application.unit_of_work import UnitOfWork
from services.domain.encounter import Encounter
from services.domain.errors import DomainError
from services.domain.prescription import Prescription, RxStatus
from services.domain.registries import Pharmacist
from services.domain.trace_code import TraceCode
from services.integrity import verify_aggregate

RX = "events.prescription:"
ENC = "events.encounter:"
ISSUED = RX + "PrescriptionIssued"
ROUTED = RX + "PrescriptionRouted"
RETURNED = RX + "PrescriptionReturned"
FLAGGED = RX + "RuleFlagged"
VISIT = ENC + "FollowUpVisitRecorded"
TRACE_SOLD = "events.trace_code:TraceCodeSold"
REVIEWED = (RX + "PrescriptionApproved", RX + "PrescriptionRejected", RX + "PrescriptionCancelled",
            RX + "PrescriptionExpired")
HIDDEN_FIELDS = frozenset({"patient_sealed", "prev_hash", "hash", "originator_id", "originator_version",
                           "timestamp", "schema_version"})
FEED_SCAN = 5000


def public_data(doc: dict[str, Any]) -> dict[str, Any]:
    """An event's business fields: no chain fields, no sealed personal data."""
    return {k: v for k, v in doc.items() if k not in HIDDEN_FIELDS}


class Reads:
    def __init__(self, store: RxTrailStore, pool: ConnectionPool[Any], schema: str = "public") -> None:
        self.store = store
        self.pool = pool
        self.events = sql.Identifier(schema, EVENTS_TABLE)

    # --- aggregates -------------------------------------------------------------------------------
    def prescriptions(self, ids: Sequence[UUID]) -> list[Prescription]:
        uow = UnitOfWork(self.store)
        found = []
        for i in ids:
            try:
                rx = uow.get(Prescription, i)
            except DomainError:
                rx = None
            if rx is not None:
                found.append(rx)
        return found

    def encounters(self, ids: Sequence[UUID]) -> list[Encounter]:
        uow = UnitOfWork(self.store)
        return [e for i in ids if (e := uow.get(Encounter, i)) is not None]

    # --- lists by a field of the creating event ---------------------------------------------------
    def _ids_where(self, topic: str, field: str, value: str, after: int, limit: int) -> list[tuple[int, UUID]]:
        query = sql.SQL(
            "SELECT notification_id, originator_id FROM {t} WHERE topic = %s "
            "AND convert_from(state, 'UTF8')::jsonb ->> {f} = %s AND notification_id > %s "
            "ORDER BY notification_id LIMIT %s"
        ).format(t=self.events, f=sql.Literal(field))
        with self.pool.connection() as conn:
            return [(r[0], r[1]) for r in conn.execute(query, (topic, value, after, limit)).fetchall()]

    def hospital_prescriptions(self, hospital_id: str, after: int, limit: int) -> tuple[list[Prescription], int | None]:
        rows = self._ids_where(ISSUED, "hospital_id", hospital_id, after, limit)
        return self.prescriptions([r[1] for r in rows]), (rows[-1][0] if len(rows) == limit else None)

    def hospital_visits(self, hospital_id: str, after: int, limit: int) -> tuple[list[Encounter], int | None]:
        rows = self._ids_where(VISIT, "hospital_id", hospital_id, after, limit)
        return self.encounters([r[1] for r in rows]), (rows[-1][0] if len(rows) == limit else None)

    def search(self, *, patient_ref: str | None, physician_id: str | None, pharmacy_id: str | None,
               trace_code: str | None, hospital_id: str | None, after: int, limit: int
               ) -> tuple[list[Prescription], int | None]:
        """Prescriptions matching every given criterion (regulators)."""
        conds = [sql.SQL("i.topic = %s"), sql.SQL("i.notification_id > %s")]
        args: list[Any] = [ISSUED, after]
        doc = sql.SQL("convert_from(i.state, 'UTF8')::jsonb")
        for field, value in (("patient_ref", patient_ref), ("physician_id", physician_id),
                             ("hospital_id", hospital_id)):
            if value is not None:
                conds.append(sql.SQL("{d} ->> {f} = %s").format(d=doc, f=sql.Literal(field)))
                args.append(value)
        if pharmacy_id is not None:
            conds.append(sql.SQL(
                "EXISTS (SELECT 1 FROM {t} r WHERE r.originator_id = i.originator_id AND r.topic = %s "
                "AND convert_from(r.state, 'UTF8')::jsonb ->> 'dispenser_id' = %s)").format(t=self.events))
            args += [ROUTED, pharmacy_id]
        if trace_code is not None:
            conds.append(sql.SQL(
                "i.originator_id::text IN (SELECT convert_from(s.state, 'UTF8')::jsonb ->> 'prescription_id' "
                "FROM {t} s WHERE s.originator_id = %s AND s.topic = %s)").format(t=self.events))
            args += [TraceCode.id_for(trace_code), TRACE_SOLD]
        query = sql.SQL("SELECT i.notification_id, i.originator_id FROM {t} i WHERE {c} "
                        "ORDER BY i.notification_id LIMIT %s").format(t=self.events, c=sql.SQL(" AND ").join(conds))
        with self.pool.connection() as conn:
            rows = conn.execute(query, (*args, limit)).fetchall()
        return self.prescriptions([r[1] for r in rows]), (rows[-1][0] if len(rows) == limit else None)

    # --- pharmacist review queue ------------------------------------------------------------------
    def review_queue(self, pharmacist: Pharmacist | None, after: int, limit: int
                     ) -> tuple[list[tuple[datetime, Prescription]], int | None]:
        """Issued prescriptions not yet reviewed, cancelled or expired that this pharmacist may review."""
        if pharmacist is None:
            return [], None
        hospital_filter = sql.SQL("")
        args: list[Any] = [ISSUED, after, list(REVIEWED)]
        if not pharmacist.third_party:
            hospital_filter = sql.SQL("AND convert_from(i.state, 'UTF8')::jsonb ->> 'hospital_id' = %s")
            args.insert(2, pharmacist.employer_id)
        query = sql.SQL(
            "SELECT i.notification_id, i.originator_id, convert_from(i.state, 'UTF8')::jsonb ->> 'timestamp' "
            "FROM {t} i WHERE i.topic = %s AND i.notification_id > %s "
            "{h} AND NOT EXISTS (SELECT 1 FROM {t} r WHERE r.originator_id = i.originator_id "
            "AND r.originator_version > 1 AND r.topic = ANY(%s)) ORDER BY i.notification_id LIMIT %s"
        ).format(t=self.events, h=hospital_filter)
        with self.pool.connection() as conn:
            rows = conn.execute(query, (*args, limit)).fetchall()
        loaded = {rx.id: rx for rx in self.prescriptions([r[1] for r in rows])}
        items = [(datetime.fromisoformat(r[2]), loaded[r[1]]) for r in rows
                 if r[1] in loaded and loaded[r[1]].status is RxStatus.ISSUED]
        return items, (rows[-1][0] if len(rows) == limit else None)

    # --- pharmacy feed ----------------------------------------------------------------------------
    def pharmacy_feed(self, pharmacy_id: str, after: int, limit: int) -> tuple[list[m.FeedItemPublic], int]:
        """Events of prescriptions while they are routed to this pharmacy, from ``after`` on, in log order.

        An event belongs to the feed when the latest routing decision at or before it (a PrescriptionRouted
        or PrescriptionReturned, by version) routed the prescription to this pharmacy, or when it is this
        pharmacy's own return. The returned cursor moves past every scanned event, matching or not.
        """
        query = sql.SQL(
            "WITH scan AS (SELECT notification_id, originator_id, originator_version, topic, state FROM {t} "
            "  WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(scan)s) "
            "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, "
            "  convert_from(e.state, 'UTF8')::jsonb AS doc, (SELECT max(notification_id) FROM scan) AS upto "
            "FROM scan e WHERE e.topic LIKE 'events.prescription:%%' AND ("
            "  (e.topic = %(returned)s AND convert_from(e.state, 'UTF8')::jsonb ->> 'dispenser_id' = %(p)s) OR "
            "  (SELECT r.topic = %(routed)s AND convert_from(r.state, 'UTF8')::jsonb ->> 'dispenser_id' = %(p)s "
            "   FROM {t} r WHERE r.originator_id = e.originator_id AND r.originator_version <= e.originator_version "
            "   AND r.topic IN (%(routed)s, %(returned)s) ORDER BY r.originator_version DESC LIMIT 1)) "
            "ORDER BY e.notification_id"
        ).format(t=self.events)
        params = {"after": after, "scan": FEED_SCAN, "p": pharmacy_id, "routed": ROUTED, "returned": RETURNED}
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
            if not rows:
                upto = conn.execute(sql.SQL("SELECT max(notification_id) FROM (SELECT notification_id FROM {t} "
                                            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s) s")
                                    .format(t=self.events), (after, FEED_SCAN)).fetchone()
                return [], int(upto[0]) if upto and upto[0] is not None else after
        items = [m.FeedItemPublic(cursor=nid, prescription_id=aid, version=version, event_type=topic.split(":")[-1],
                                  at=doc["timestamp"], data=public_data(doc),
                                  prescription=self._dispensing_view(aid) if topic == ROUTED else None)
                 for nid, aid, version, topic, doc, _upto in rows[:limit]]
        cursor = items[-1].cursor if len(rows) > limit else int(rows[0][5])
        return items, cursor

    def _dispensing_view(self, prescription_id: UUID) -> dict[str, Any]:
        query = sql.SQL("SELECT convert_from(state, 'UTF8')::jsonb FROM {t} "
                        "WHERE originator_id = %s AND originator_version = 1").format(t=self.events)
        with self.pool.connection() as conn:
            row = conn.execute(query, (prescription_id,)).fetchone()
        if row is None:
            return {}
        keep = ("hospital_id", "pooling_region", "insured_region", "insurance_type", "patient_ref", "physician_id",
                "diagnosis_code", "diagnosis_name", "items", "valid_until", "business_type")
        return {k: row[0].get(k) for k in keep}

    # --- regulators -------------------------------------------------------------------------------
    def trail(self, rx: Prescription) -> list[m.TrailEventPublic]:
        """The visit, the prescription and its trace codes' events, in time order."""
        streams: list[tuple[str, UUID]] = [("Encounter", rx.encounter_id), ("Prescription", rx.id)]
        codes = sorted({code for lines in rx.dispenses.values() for line in lines for code in line.trace_codes}
                       | set(self._sold_codes(rx.id)))
        streams += [("TraceCode", TraceCode.id_for(code)) for code in codes]
        out = []
        for kind, aggregate_id in streams:
            for event in load_stream(self.store, aggregate_id):
                doc = event.model_dump(mode="json")
                if kind == "TraceCode" and doc.get("prescription_id") not in (None, str(rx.id)):
                    continue
                out.append({"aggregate_id": aggregate_id, "aggregate_type": kind,
                            "version": event.originator_version, "event_type": type(event).__name__,
                            "at": event.timestamp, "data": public_data(doc)})
        out.sort(key=lambda e: (e["at"], e["aggregate_type"] != "Encounter", e["version"]))
        return [m.TrailEventPublic(**e) for e in out]

    def _sold_codes(self, prescription_id: UUID) -> list[str]:
        query = sql.SQL("SELECT convert_from(state, 'UTF8')::jsonb ->> 'code' FROM {t} WHERE topic = %s "
                        "AND convert_from(state, 'UTF8')::jsonb ->> 'prescription_id' = %s").format(t=self.events)
        with self.pool.connection() as conn:
            return [r[0] for r in conn.execute(query, (TRACE_SOLD, str(prescription_id))).fetchall()]

    def verification(self, rx: Prescription) -> m.VerificationPublic:
        ids = [rx.encounter_id, rx.id]
        broken = [link for i in ids if (link := verify_aggregate(self.store, i)) is not None]
        return m.VerificationPublic(verified=not broken, aggregates=len(ids), broken=[
            {"aggregate_id": str(b.aggregate_id), "version": b.version, "reason": b.reason} for b in broken])

    def flags(self, rule: str | None, after: int, limit: int) -> tuple[list[m.FlagPublic], int | None]:
        cond = sql.SQL("AND convert_from(state, 'UTF8')::jsonb ->> 'rule_id' = %s") if rule else sql.SQL("")
        query = sql.SQL("SELECT notification_id, originator_id, originator_version, "
                        "convert_from(state, 'UTF8')::jsonb FROM {t} WHERE topic = %s AND notification_id > %s {c} "
                        "ORDER BY notification_id LIMIT %s").format(t=self.events, c=cond)
        args = (FLAGGED, after, *((rule,) if rule else ()), limit)
        with self.pool.connection() as conn:
            rows = conn.execute(query, args).fetchall()
        items = [m.FlagPublic(cursor=n, prescription_id=a, version=v, rule=d["rule_id"], reason=d["reason"],
                              at=d["timestamp"], details=d.get("details", {})) for n, a, v, d in rows]
        return items, (rows[-1][0] if len(rows) == limit else None)

    # --- agency -----------------------------------------------------------------------------------
    def region_parties(self, region: str) -> tuple[set[str], set[str]]:
        """Hospitals with visits in the pooling region, and pharmacies designated in it."""
        query = sql.SQL(
            "SELECT DISTINCT convert_from(state, 'UTF8')::jsonb ->> %s AS party FROM {t} "
            "WHERE topic = %s AND convert_from(state, 'UTF8')::jsonb ->> 'pooling_region' = %s"
        ).format(t=self.events)
        hospitals: set[str] = set()
        pharmacies: set[str] = set()
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            for field, topic, bucket in (("hospital_id", VISIT, hospitals),
                                         ("pharmacy_id", "events.registries:PharmacyDesignated", pharmacies)):
                cur.execute(query, (field, topic, region))
                bucket.update(r["party"] for r in cur.fetchall() if r["party"])
        return hospitals, pharmacies

    def region_statements(self, region: str, month: str | None) -> list[m.StatementPublic]:
        """The monthly statements (settlement projections) of the hospitals and pharmacies of a pooling region."""
        hospitals, pharmacies = self.region_parties(region)
        out: list[m.StatementPublic] = []
        for fetch, schema, key, kind_key, wanted in (
            (hospital_statements, HospitalSettlement.name, "hospital_id", None, hospitals),
            (pharmacy_statements, PharmacySettlement.name, "party_id", "party_kind", pharmacies),
        ):
            if not wanted:
                continue
            try:
                with self.pool.connection() as conn:
                    rows = fetch(conn, schema, month=month)
            except psycopg.errors.UndefinedTable:  # that projection has not been created yet: nothing settled
                continue
            for row in rows:
                if row[key] not in wanted or (kind_key and row[kind_key] != "pharmacy"):
                    continue
                figures = {k: v for k, v in row.items() if k not in {key, kind_key, "month"}}
                out.append(m.StatementPublic(party_kind="hospital" if kind_key is None else "pharmacy",
                                             party_id=row[key], month=row["month"], figures=figures))
        return out
