"""Hospital settlement: what the agency owes each internet hospital, per settlement month, rolled up to the
physical designated institution whose agreement and budget it shares (DOMAIN.md, Settlement).

Booked per hospital, physical institution and month (China Standard Time, of the event that moves money):
consultation fees (``ConsultationSettled``), drugs the hospital dispensed itself (``PrescriptionSettled`` with
``settled_with_kind = hospital``), their fund / personal-account / self-pay split, fees refused in audit and
fees clawed back (booked in the month of the audit event, the month they are deducted from). Delivery fees
are kept apart: never in the fund share, and not in ``self_pay`` either (that is the drugs' self-pay).

Also booked: consultation-fee refusals and clawbacks (``ConsultationFeesRefused`` / ``ConsultationFeesClawedBack``)
and reversals (``SettlementReversed``: fund + personal account given back), in the month of their event. The views
hold the month's sums and ``insured_net = fund + personal_account − refused − clawed_back − reversed``: what the
agency owes before the deposit. The deposit is region policy data (``services.reference.policies.provider_terms``),
so it is applied where the statement is made (``services.domain.statement.amounts_due``), not here.

The same sums are also booked per pooling region (``region_monthly``, view ``region_statements``): what one
agency's statement of a hospital shows, when the hospital serves several regions. A line's region is the
``pooling_region`` of its visit or prescription: the treatment region, whose agency settles with the provider
(DOMAIN.md, Settlement: the agency of a pooling region settles with the hospitals and pharmacies of the region;
it is also the agency the access gate lets read the prescription and refuse or claw back its fees). For off-site
care (R12) the insured region's policy prices the line (``policy_region`` on the settlement event) and its fund
bears the cost through clearing between agencies, which is not part of these statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.prescription import (
    DispenserKind,
    FeesClawedBack,
    FeesRefusedInAudit,
    PrescriptionIssued,
    PrescriptionRouted,
    PrescriptionSettled,
)
from events.statement import (
    ConsultationFeesClawedBack,
    ConsultationFeesRefused,
    SettlementFailed,
    SettlementFailureResolved,
    SettlementReversed,
    SubjectKind,
)
from projections.base import Delivered, event_types
from projections.hospital_settlement.ledger import (
    ZERO,
    add_deltas,
    select_view,
    settlement_month,
    upsert_rows,
)

DEFAULT_DEPOSIT_RATE = Decimal("0.05")
"""Unused by the projection (kept for old configuration): the deposit is region policy data."""

MONTHLY_KEYS = ("hospital_id", "physical_institution_id", "month")
MONTHLY_SUMS = ("consultations", "consultation_fees", "prescriptions", "drug_fees", "fund", "personal_account",
                "self_pay", "delivery_fees", "refused", "clawed_back", "reversed")
_MONTHLY_TYPES = (*(["text"] * len(MONTHLY_KEYS)),
                  *("int" if c in ("consultations", "prescriptions") else "numeric" for c in MONTHLY_SUMS))
_LOOKUP_COLUMNS = ("hospital_id", "physical_institution_id", "dispenser_kind", "dispenser_id", "settled_kind",
                   "pooling_region")
REGION_KEYS = ("pooling_region", *MONTHLY_KEYS)
_RELEVANT_RX = (PrescriptionIssued, PrescriptionRouted, PrescriptionSettled, FeesRefusedInAudit, FeesClawedBack)
_CASE_EVENTS = (ConsultationFeesRefused, ConsultationFeesClawedBack, SettlementReversed)


@dataclass
class _Rx:
    hospital_id: str
    physical_institution_id: str
    dispenser_kind: str | None = None
    dispenser_id: str | None = None
    settled_kind: str | None = None
    pooling_region: str | None = None  # None: booked before the projection kept regions (a rebuild fills it)

    def row(self, rx_id: UUID) -> tuple[Any, ...]:
        return (rx_id, self.hospital_id, self.physical_institution_id, self.dispenser_kind, self.dispenser_id,
                self.settled_kind, self.pooling_region)


class _Month:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, Any] = {c: 0 if c in ("consultations", "prescriptions") else ZERO
                                       for c in MONTHLY_SUMS}

    def add(self, **amounts: Any) -> None:
        for column, amount in amounts.items():
            self.values[column] += amount


class HospitalSettlement:
    """The hospital settlement projection (schema ``hospital_settlement`` by default)."""

    name = "hospital_settlement"
    reads = event_types(*_RELEVANT_RX, *_CASE_EVENTS, FollowUpVisitRecorded, ConsultationSettled, SettlementFailed,
                        SettlementFailureResolved)


    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        money = "numeric(16,2) NOT NULL DEFAULT 0"
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, hospital_id text NOT NULL,"
            " physical_institution_id text NOT NULL, dispenser_kind text, dispenser_id text, settled_kind text)"
        ).format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.encounters (encounter_id uuid PRIMARY KEY, hospital_id text NOT NULL,"
            " physical_institution_id text NOT NULL)").format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.monthly (hospital_id text, physical_institution_id text, month text,"
            " consultations int NOT NULL DEFAULT 0, consultation_fees " + money + ","
            " prescriptions int NOT NULL DEFAULT 0, drug_fees " + money + ", fund " + money + ","
            " personal_account " + money + ", self_pay " + money + ", delivery_fees " + money + ","
            " refused " + money + ", clawed_back " + money + ","
            " PRIMARY KEY (hospital_id, physical_institution_id, month))").format(s))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS monthly_institution ON {}.monthly "
                             "(physical_institution_id, month)").format(s))
        for table in ("prescriptions", "encounters"):
            conn.execute(sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS pooling_region text").format(
                s, sql.Identifier(table)))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.region_monthly (pooling_region text, hospital_id text,"
            " physical_institution_id text, month text,"
            " consultations int NOT NULL DEFAULT 0, consultation_fees " + money + ","
            " prescriptions int NOT NULL DEFAULT 0, drug_fees " + money + ", fund " + money + ","
            " personal_account " + money + ", self_pay " + money + ", delivery_fees " + money + ","
            " refused " + money + ", clawed_back " + money + ","
            " PRIMARY KEY (pooling_region, hospital_id, physical_institution_id, month))").format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.settlement_issues (case_id uuid PRIMARY KEY, subject_kind text NOT NULL,"
            " subject_id uuid NOT NULL, pooling_region text NOT NULL, open boolean NOT NULL, rule_id text,"
            " error text NOT NULL, reason text NOT NULL, trigger text NOT NULL, failed_at timestamptz NOT NULL,"
            " failures int NOT NULL DEFAULT 1, resolution text, resolution_reason text, resolved_by text,"
            " resolved_at timestamptz)").format(s))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS settlement_issues_region ON {}.settlement_issues"
                             " (pooling_region, open, failed_at)").format(s))
        for table in ("monthly", "region_monthly"):
            conn.execute(sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS reversed " + money).format(
                s, sql.Identifier(table)))
        sums = ("consultations, consultation_fees, prescriptions, drug_fees, fund, personal_account, self_pay,"
                " delivery_fees, refused, clawed_back, reversed,"
                " fund + personal_account - refused - clawed_back - reversed AS insured_net")
        for view in ("statements", "region_statements", "institution_statements", "region_institution_statements"):
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}.{}").format(s, sql.Identifier(view)))
        conn.execute(sql.SQL("CREATE VIEW {s}.statements AS SELECT hospital_id, physical_institution_id, month, "
                             + sums + " FROM {s}.monthly").format(s=s))
        conn.execute(sql.SQL("CREATE VIEW {s}.region_statements AS SELECT pooling_region, hospital_id,"
                             " physical_institution_id, month, " + sums + " FROM {s}.region_monthly").format(s=s))
        conn.execute(sql.SQL(
            "CREATE VIEW {s}.institution_statements AS SELECT physical_institution_id, month,"
            " count(*)::int AS hospitals, sum(consultations)::int AS consultations,"
            " sum(consultation_fees) AS consultation_fees, sum(prescriptions)::int AS prescriptions,"
            " sum(drug_fees) AS drug_fees, sum(fund) AS fund, sum(personal_account) AS personal_account,"
            " sum(self_pay) AS self_pay, sum(delivery_fees) AS delivery_fees, sum(refused) AS refused,"
            " sum(clawed_back) AS clawed_back, sum(reversed) AS reversed,"
            " sum(fund + personal_account - refused - clawed_back - reversed) AS insured_net"
            " FROM {s}.monthly GROUP BY physical_institution_id, month").format(s=s))
        conn.execute(sql.SQL(
            "CREATE VIEW {s}.region_institution_statements AS SELECT pooling_region, physical_institution_id,"
            " month, count(*)::int AS hospitals, sum(consultations)::int AS consultations,"
            " sum(consultation_fees) AS consultation_fees, sum(prescriptions)::int AS prescriptions,"
            " sum(drug_fees) AS drug_fees, sum(fund) AS fund, sum(personal_account) AS personal_account,"
            " sum(self_pay) AS self_pay, sum(delivery_fees) AS delivery_fees, sum(refused) AS refused,"
            " sum(clawed_back) AS clawed_back, sum(reversed) AS reversed,"
            " sum(fund + personal_account - refused - clawed_back - reversed) AS insured_net"
            " FROM {s}.region_monthly GROUP BY pooling_region, physical_institution_id, month").format(s=s))

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        s = sql.Identifier(schema)
        created_rx = {d.aggregate_id for d in batch if isinstance(d.event, PrescriptionIssued)}
        created_enc = {d.aggregate_id for d in batch if isinstance(d.event, FollowUpVisitRecorded)}
        want_rx = {d.aggregate_id for d in batch if isinstance(d.event, _RELEVANT_RX)} - created_rx
        want_enc = {d.aggregate_id for d in batch if isinstance(d.event, ConsultationSettled)} - created_enc
        for d in batch:
            if isinstance(d.event, _CASE_EVENTS):
                if d.event.subject_kind is SubjectKind.PRESCRIPTION:
                    want_rx.add(d.event.subject_id)
                else:
                    want_enc.add(d.event.subject_id)
        want_rx -= created_rx
        want_enc -= created_enc

        rxs: dict[UUID, _Rx] = {}
        if want_rx:
            for row in conn.execute(sql.SQL(
                    "SELECT prescription_id, hospital_id, physical_institution_id, dispenser_kind, dispenser_id,"
                    " settled_kind, pooling_region FROM {}.prescriptions WHERE prescription_id = ANY(%s)").format(s),
                    (list(want_rx),)):
                rxs[row[0]] = _Rx(*row[1:])
        encounters: dict[UUID, tuple[str, str, str | None]] = {}
        if want_enc:
            for row in conn.execute(sql.SQL(
                    "SELECT encounter_id, hospital_id, physical_institution_id, pooling_region FROM {}.encounters"
                    " WHERE encounter_id = ANY(%s)").format(s), (list(want_enc),)):
                encounters[row[0]] = (row[1], row[2], row[3])

        changed_rx: set[UUID] = set()
        new_enc: dict[UUID, tuple[str, str, str | None]] = {}
        months: dict[tuple[str, str, str | None, str], _Month] = {}

        def month(hospital: str, institution: str, region: str | None, d: Delivered) -> _Month:
            key = (hospital, institution, region, settlement_month(d.timestamp))
            if (m := months.get(key)) is None:
                m = months[key] = _Month()
            return m

        for d in batch:
            e = d.event
            if isinstance(e, _CASE_EVENTS):
                self._case_event(e, d, rxs, encounters, month)
            elif isinstance(e, FollowUpVisitRecorded):
                encounters[d.aggregate_id] = new_enc[d.aggregate_id] = (e.hospital_id, e.physical_institution_id,
                                                                        e.pooling_region)
            elif isinstance(e, ConsultationSettled):
                if (enc := encounters.get(d.aggregate_id)) is not None:
                    month(*enc, d).add(consultations=1, consultation_fees=e.fund + e.personal_account + e.self_pay,
                                       fund=e.fund, personal_account=e.personal_account, self_pay=e.self_pay)
            elif isinstance(e, PrescriptionIssued):
                rxs[d.aggregate_id] = _Rx(e.hospital_id, e.physical_institution_id, pooling_region=e.pooling_region)
                changed_rx.add(d.aggregate_id)
            elif (rx := rxs.get(d.aggregate_id)) is None:
                continue  # a stream whose issue this view never saw (an as-of cut): nothing to book it to
            elif isinstance(e, PrescriptionRouted):
                rx.dispenser_kind, rx.dispenser_id = e.dispenser_kind.value, e.dispenser_id
                changed_rx.add(d.aggregate_id)
            elif isinstance(e, PrescriptionSettled):
                rx.settled_kind = e.settled_with_kind.value
                changed_rx.add(d.aggregate_id)
                if e.settled_with_kind is DispenserKind.HOSPITAL:
                    month(rx.hospital_id, rx.physical_institution_id, rx.pooling_region, d).add(
                        prescriptions=1, drug_fees=e.total - e.delivery_fee, fund=e.fund,
                        personal_account=e.personal_account, self_pay=e.self_pay - e.delivery_fee,
                        delivery_fees=e.delivery_fee)
            elif isinstance(e, FeesRefusedInAudit | FeesClawedBack) and rx.settled_kind == DispenserKind.HOSPITAL.value:
                column = "refused" if isinstance(e, FeesRefusedInAudit) else "clawed_back"
                month(rx.hospital_id, rx.physical_institution_id, rx.pooling_region, d).add(**{column: e.amount})

        self._write(conn, schema, rxs, changed_rx, new_enc, months)
        _issues(conn, schema, batch)

    @staticmethod
    def _case_event(e: ConsultationFeesRefused | ConsultationFeesClawedBack | SettlementReversed, d: Delivered,
                    rxs: dict[UUID, _Rx], encounters: dict[UUID, tuple[str, str, str | None]],
                    month: Any) -> None:
        """A consultation refusal or clawback, or a reversal of a settlement made with the institution."""
        if e.subject_kind is SubjectKind.PRESCRIPTION:
            rx = rxs.get(e.subject_id)
            if rx is None or rx.settled_kind != DispenserKind.HOSPITAL.value:
                return
            where = (rx.hospital_id, rx.physical_institution_id, rx.pooling_region)
        elif (enc := encounters.get(e.subject_id)) is not None:
            where = enc
        else:
            return
        if isinstance(e, SettlementReversed):
            month(*where, d).add(reversed=e.fund + e.personal_account)
        elif isinstance(e, ConsultationFeesRefused):
            month(*where, d).add(refused=e.amount)
        else:
            month(*where, d).add(clawed_back=e.amount)

    @staticmethod
    def _write(conn: psycopg.Connection[Any], schema: str, rxs: dict[UUID, _Rx], changed_rx: set[UUID],
               new_enc: dict[UUID, tuple[str, str, str | None]],
               months: dict[tuple[str, str, str | None, str], _Month]) -> None:
        upsert_rows(conn, schema, "prescriptions", ("prescription_id",), _LOOKUP_COLUMNS,
                    [rxs[i].row(i) for i in changed_rx], ("uuid", *(["text"] * 6)))
        upsert_rows(conn, schema, "encounters", ("encounter_id",),
                    ("hospital_id", "physical_institution_id", "pooling_region"),
                    [(i, *v) for i, v in new_enc.items()], ("uuid", "text", "text", "text"))
        whole: dict[tuple[str, str, str], _Month] = {}
        for (hospital, institution, _, mon), m in months.items():
            whole.setdefault((hospital, institution, mon), _Month()).add(**m.values)
        add_deltas(conn, schema, "monthly", MONTHLY_KEYS, MONTHLY_SUMS,
                   [(*k, *(m.values[c] for c in MONTHLY_SUMS)) for k, m in whole.items()], _MONTHLY_TYPES)
        add_deltas(conn, schema, "region_monthly", REGION_KEYS, MONTHLY_SUMS,
                   [(region, hospital, institution, mon, *(m.values[c] for c in MONTHLY_SUMS))
                    for (hospital, institution, region, mon), m in months.items() if region is not None],
                   ("text", *_MONTHLY_TYPES))


def statements(conn: psycopg.Connection[Any], schema: str = HospitalSettlement.name, *, month: str | None = None,
               hospital_id: str | None = None) -> list[dict[str, Any]]:
    """Hospital statements (one row per hospital and month), filtered by month and/or hospital."""
    return select_view(conn, schema, "statements", ("hospital_id", "month"), {"month": month, "hospital_id": hospital_id})


def region_statements(conn: psycopg.Connection[Any], schema: str = HospitalSettlement.name, *, pooling_region: str,
                      month: str | None = None) -> list[dict[str, Any]]:
    """Hospital statements of one pooling region's lines only (one row per hospital and month)."""
    return select_view(conn, schema, "region_statements", ("hospital_id", "physical_institution_id", "month"),
                       {"pooling_region": pooling_region, "month": month})


def institution_statements(conn: psycopg.Connection[Any], schema: str = HospitalSettlement.name, *,
                           month: str | None = None, physical_institution_id: str | None = None
                           ) -> list[dict[str, Any]]:
    """Statements rolled up to the physical designated institution (the deposit is taken on the roll-up)."""
    return select_view(conn, schema, "institution_statements", ("physical_institution_id", "month"),
                       {"month": month, "physical_institution_id": physical_institution_id})


def region_institution_statements(conn: psycopg.Connection[Any], schema: str = HospitalSettlement.name, *,
                                  pooling_region: str, month: str | None = None) -> list[dict[str, Any]]:
    """One pooling region's lines rolled up to the physical institution (what that region's agency pays)."""
    return select_view(conn, schema, "region_institution_statements", ("physical_institution_id", "month"),
                       {"pooling_region": pooling_region, "month": month})


def _issues(conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
    """The agency's queue of settlements that failed: open until resolved (retried, written off, settled)."""
    s = sql.Identifier(schema)
    for d in batch:
        e = d.event
        if isinstance(e, SettlementFailed):
            conn.execute(sql.SQL(
                "INSERT INTO {}.settlement_issues (case_id, subject_kind, subject_id, pooling_region, open, rule_id,"
                " error, reason, trigger, failed_at) VALUES (%s, %s, %s, %s, true, %s, %s, %s, %s, %s)"
                " ON CONFLICT (case_id) DO UPDATE SET open = true, rule_id = EXCLUDED.rule_id,"
                " error = EXCLUDED.error, reason = EXCLUDED.reason, trigger = EXCLUDED.trigger,"
                " failed_at = EXCLUDED.failed_at, failures = {}.settlement_issues.failures + 1,"
                " resolution = NULL, resolution_reason = NULL, resolved_by = NULL, resolved_at = NULL").format(s, s),
                (d.aggregate_id, e.subject_kind.value, e.subject_id, e.pooling_region, e.rule_id, e.error, e.reason,
                 e.trigger, d.timestamp))
        elif isinstance(e, SettlementFailureResolved):
            conn.execute(sql.SQL(
                "UPDATE {}.settlement_issues SET open = false, resolution = %s, resolution_reason = %s,"
                " resolved_by = %s, resolved_at = %s WHERE case_id = %s").format(s),
                (e.resolution.value, e.reason, e.resolved_by, d.timestamp, d.aggregate_id))


def settlement_issues(conn: psycopg.Connection[Any], schema: str = HospitalSettlement.name, *,
                      pooling_region: str | None = None, open_only: bool = True, limit: int = 500
                      ) -> list[dict[str, Any]]:
    """Settlement failures of a pooling region (all regions: None), oldest first; open ones only by default."""
    from psycopg.rows import dict_row

    where = [sql.SQL("true")]
    args: list[Any] = []
    if pooling_region is not None:
        where.append(sql.SQL("pooling_region = %s"))
        args.append(pooling_region)
    if open_only:
        where.append(sql.SQL("open"))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {}.settlement_issues WHERE {} ORDER BY failed_at, case_id LIMIT %s").format(
            sql.Identifier(schema), sql.SQL(" AND ").join(where)), [*args, limit])
        return cur.fetchall()
