"""`rxtrail investigate`: a regulator's investigation of a patient, physician, pharmacy, hospital, trace code or
prescription — the trails (from the traceability projection) and the fraud findings that concern it, as Rich
timelines or JSON, optionally exported as a signed evidence bundle that `rxtrail verify --bundle` checks offline.

Patients are looked up by national id or by their pseudonym (``patient_ref``); only the pseudonym is ever shown,
as in the regulator's API view. ``--as-of`` reads both projections as they stood then (built from the event store
into their as-of schemas when not there yet).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)

PATIENT_REF = re.compile(r"^[0-9a-f]{64}$")
TRACE_CODE = re.compile(r"^\d{20}$")
_SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def investigate(
    patient: str | None = typer.Option(None, "--patient", help="national id or patient pseudonym (patient_ref)"),
    physician: str | None = typer.Option(None, "--physician", help="physician id"),
    pharmacy: str | None = typer.Option(None, "--pharmacy", help="pharmacy (dispenser) id"),
    hospital: str | None = typer.Option(None, "--hospital", help="hospital or institution id"),
    trace_code: str | None = typer.Option(None, "--trace-code", help="20-digit drug traceability code"),
    prescription: str | None = typer.Option(None, "--prescription", help="prescription id"),
    as_of: datetime | None = typer.Option(None, "--as-of", help="as things stood then (ISO time, UTC unless an "
                                                                "offset is given)"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
    bundle: Path | None = typer.Option(None, "--bundle", help="also write a signed evidence bundle of everything "
                                                              "shown (`rxtrail verify --bundle PATH` checks it)"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="at most this many prescriptions"),
) -> None:
    """Trails and fraud findings about a patient, physician, pharmacy, hospital, trace code or prescription."""
    given = {k: v for k, v in (("patient", patient), ("physician", physician), ("pharmacy", pharmacy),
                               ("hospital", hospital), ("trace_code", trace_code), ("prescription", prescription))
             if v is not None}
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --patient, --physician, --pharmacy, --hospital, --trace-code, "
                                 "--prescription")
    if trace_code is not None and not TRACE_CODE.match(trace_code):
        raise typer.BadParameter("a trace code is 20 digits", param_hint="--trace-code")
    if prescription is not None:
        try:
            UUID(prescription)
        except ValueError as exc:
            raise typer.BadParameter("not a prescription id (UUID)", param_hint="--prescription") from exc
    when = None if as_of is None else (as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of)

    from services.infra.settings import Settings

    s = Settings()
    settings = s.model_copy(update={"database_url": s.resolved_database_url()})
    database_url = str(settings.database_url)
    query = dict(given)
    if patient is not None:  # the national id never leaves this function: only its pseudonym is used and shown
        query["patient"] = _patient_ref(settings, patient)
    from services.bootstrap import shard_database_urls

    stores = shard_database_urls(settings) if settings.shards else None
    try:
        report = collect(database_url, query, when, limit, stores=stores)
    except LookupError as exc:
        err.print(f"[bold red]investigate:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    if json_out:
        console.print_json(json.dumps(report, default=str, ensure_ascii=False))
    else:
        render(report)
    if bundle is not None:
        from services.integrity.bundle import export_investigation

        path = export_investigation(stores or database_url, settings.data_dir, report,
                                    sorted(proven_aggregates(report)), bundle)
        (err if json_out else console).print(f"wrote evidence bundle {path} ({len(proven_aggregates(report))} "
                                             "trails); `rxtrail verify --bundle` checks it offline", highlight=False,
                                             markup=False)


def _patient_ref(settings: Any, value: str) -> str:
    if PATIENT_REF.match(value):
        return value
    from services.application.privacy import pseudonym

    try:
        return pseudonym(settings.resolved_pseudonym_secret(), value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--patient") from exc


# --- reading ------------------------------------------------------------------------------------------------------


def _schemas(database_url: str, as_of: datetime | None, stores: dict[str, str] | None = None) -> dict[str, str]:
    """The schemas to read (as-of schemas built from the event store, or every shard's, when missing)."""
    import psycopg

    from projections.fraud.queries import exists

    names = {"traceability": "traceability", "fraud": "fraud"}
    if as_of is not None:
        from services.replay import as_of_schema, replay

        names = {n: as_of_schema(n, as_of) for n in names}
        with psycopg.connect(database_url) as conn:
            missing = [n for n, schema in names.items()
                       if not conn.execute("SELECT to_regclass(%s)", (f"{schema}.stream_versions",)).fetchone()[0]]  # type: ignore[index]
        for n in missing:
            replay(n, database_url, None, as_of=as_of, from_store=True, progress=False, stores=stores)
    with psycopg.connect(database_url) as conn:
        if not exists(conn, names["fraud"]) or not conn.execute(
                "SELECT to_regclass(%s)", (f"{names['traceability']}.prescriptions",)).fetchone()[0]:  # type: ignore[index]
            raise LookupError("the traceability and fraud projections are not built here: run the stack "
                              "(`rxtrail up`) or `rxtrail replay all --from-store`")
    return names


def collect(database_url: str, query: dict[str, str], as_of: datetime | None, limit: int = 50, *,
            stores: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the investigation shows, as JSON-ready data: the prescriptions with their trails, the trace code's
    sales and refused attempts, and the findings."""
    import psycopg

    from projections.fraud import queries as fq
    from projections.traceability import queries as tq

    schemas = _schemas(database_url, as_of, stores)
    ts, fs = schemas["traceability"], schemas["fraud"]
    (kind, value), = query.items()
    out: dict[str, Any] = {"query": {kind: value}, "as_of": as_of.isoformat() if as_of else None,
                           "generated_at": datetime.now(UTC).isoformat(), "schemas": schemas}
    with psycopg.connect(database_url) as conn:
        summaries: list[dict[str, Any]] = []
        findings: dict[str, dict[str, Any]] = {}

        def add_findings(**filters: Any) -> None:
            for f in fq.finding_page(conn, fs, limit=1000, **filters):
                findings.setdefault(f["finding_id"], f)

        if kind == "patient":
            summaries = tq.by_patient(conn, ts, value, limit=limit)
            add_findings(patient_ref=value)
            add_findings(party=f"patient:{value}")
        elif kind == "physician":
            summaries = tq.by_physician(conn, ts, value, limit=limit)
            add_findings(party=f"physician:{value}")
        elif kind == "pharmacy":
            summaries = tq.by_pharmacy(conn, ts, value, limit=limit)
            add_findings(party=f"pharmacy:{value}")
            add_findings(party=f"seller:{value}")
        elif kind == "hospital":
            page = tq.prescription_page(conn, ts, after=0, limit=limit, hospital_id=value)
            summaries = [s for _, rx in page if (s := tq.prescription(conn, ts, rx)) is not None]
            add_findings(party=f"hospital:{value}")
            add_findings(party=f"institution:{value}")
        elif kind == "prescription":
            one = tq.prescription(conn, ts, value)
            summaries = [one] if one is not None else []
        elif kind == "trace_code":
            uses = tq.by_trace_code(conn, ts, value)
            sales = fq.code_events(conn, fs, value)
            attempts = fq.refused_attempts(conn, fs, value)
            rx_ids = list(dict.fromkeys([str(u["prescription_id"]) for u in uses if u["prescription_id"]]
                                        + [str(a["aggregate_id"]) for a in attempts]))
            summaries = [s for rx in rx_ids[:limit] if (s := tq.prescription(conn, ts, rx)) is not None]
            out["trace_code"] = {"code": value, "sales": sales, "dispenses": uses, "refused_attempts": attempts}
            add_findings(subject=value)
        for s in summaries:
            add_findings(prescription_id=s["prescription_id"])
        out["prescriptions"] = [
            {**s, "trail": [step.__dict__ for step in tq.trail(conn, ts, s["prescription_id"])]} for s in summaries]
        out["findings"] = sorted(findings.values(), key=lambda f: (f["seq"]))
    return json.loads(json.dumps(out, default=str))


def proven_aggregates(report: dict[str, Any]) -> set[str]:
    """Every stream the report rests on: each prescription, its visit, the trace code's stream, and every stream a
    finding cites as evidence."""
    ids: set[str] = set()
    for rx in report.get("prescriptions", []):
        ids.add(str(rx["prescription_id"]))
        if rx.get("encounter_id"):
            ids.add(str(rx["encounter_id"]))
        ids.update(str(step["stream_id"]) for step in rx.get("trail", []))
    code = report.get("trace_code") or {}
    ids.update(str(e["aggregate_id"]) for e in code.get("sales", []))
    ids.update(str(e["aggregate_id"]) for e in code.get("refused_attempts", []))
    for f in report.get("findings", []):
        ids.update(str(link["aggregate_id"]) for link in f.get("evidence", []))
    return ids


# --- showing ------------------------------------------------------------------------------------------------------


def _at(text: str | None) -> str:
    return (text or "")[:19].replace("T", " ")


def render(report: dict[str, Any]) -> None:
    (kind, value), = report["query"].items()
    shown = value[:12] + "…" if kind == "patient" else value
    console.print(f"[bold]investigation[/] {kind} [cyan]{escape(shown)}[/]"
                  + (f" as of {escape(report['as_of'])}" if report["as_of"] else ""), highlight=False)
    code = report.get("trace_code")
    if code is not None:
        t = Table(title=f"trace code {code['code']}: sales and refused attempts", title_justify="left")
        for col in ("at (UTC)", "what", "by", "prescription", "event"):
            t.add_column(col, overflow="fold")
        rows = [(e["at"], e["event_type"], e.get("seller_id") or "", e.get("prescription_id") or "", e["event_id"], "")
                for e in code["sales"]]
        rows += [(a["at"], "refused (R8)", a.get("dispenser_id") or "", a["aggregate_id"], a["event_id"], "red")
                 for a in code["refused_attempts"]]
        for at, what, by, rx, event, style in sorted(rows, key=lambda r: r[0]):
            t.add_row(_at(at), what, escape(str(by)), str(rx), event, style=style or None)
        if not rows:
            t.add_row("", "no sale or attempt recorded", "", "", "")
        console.print(t)
    for rx in report["prescriptions"]:
        title = (f"prescription {rx['prescription_id']} · {rx.get('status')} · hospital {rx.get('hospital_id')} · "
                 f"physician {rx.get('physician_id')} · dispenser {rx.get('dispenser_id') or '-'} · patient "
                 f"{(rx.get('patient_ref') or '')[:12]}…")
        t = Table(title=escape(title), title_justify="left")
        for col in ("at (UTC)", "step", "actor", "details", "event"):
            t.add_column(col, overflow="fold")
        for step in rx["trail"]:
            t.add_row(_at(step["at"]), step["step"], escape(str(step["actor"])[:40]), escape(_detail(step)),
                      step["event_id"], style="red" if step["step"] == "RuleFlagged" else None)
        console.print(t)
    if not report["prescriptions"]:
        console.print("no prescriptions found", style="dim")
    t = Table(title=f"findings ({len(report['findings'])})", title_justify="left")
    for col in ("severity", "pattern", "finding", "explanation", "evidence"):
        t.add_column(col, overflow="fold")
    for f in report["findings"]:
        t.add_row(f"[{_SEVERITY_STYLE.get(f['severity'], '')}]{f['severity']}[/]", f["pattern"], f["finding_id"],
                  escape(f["explanation"]), f"{len(f['evidence'])} events")
    console.print(t)


def _detail(step: dict[str, Any]) -> str:
    d = step.get("details") or {}
    match step["step"]:
        case "PrescriptionDispensed":
            lines = d.get("lines") or []
            codes = sum(len(line.get("trace_codes") or ()) for line in lines)
            return (f"dispense {d.get('dispense_no')}: " + ", ".join(
                f"{line.get('drug_code')} ×{line.get('quantity')} @ {line.get('unit_price')}" for line in lines)
                + f" ({codes} trace codes)")
        case "RuleFlagged":
            return f"{d.get('rule_id')}: {d.get('reason')}"
        case "PrescriptionSettled":
            return (f"total {d.get('total')} = fund {d.get('fund')} + personal account {d.get('personal_account')} "
                    f"+ self-pay {d.get('self_pay')}")
        case "PrescriptionIssued":
            return ", ".join(f"{i.get('drug_code')} ×{i.get('quantity')} ({i.get('days_supply')} d)"
                             for i in d.get("items") or ())
        case _:
            return ""
