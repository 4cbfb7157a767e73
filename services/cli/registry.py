"""``rxtrail registry …``: the authority's registries from the command line (issue 13).

- ``rxtrail registry seed``: the shipped reference data (drug catalog, payment standards, price caps, chronic-disease
  lists) as registry events (``seed:<version>``), idempotent.
- ``rxtrail registry send WHAT --as agency:370100 --json '{…}'``: one registry command, WHAT as in
  ``POST /registry/<what>`` (``rxtrail registry kinds`` lists them with their fields).
- ``rxtrail registry import FILE.csv --kind WHAT --as agency:370100``: one command per row (a header row names the
  body fields; lists separated by ``;``; an empty cell is an unset field). Every row is validated first: if any row
  is invalid, nothing is applied and each bad row is reported. Then each row is applied with its own outcome
  (applied, already applied by an earlier import of the same file, or refused with the reason); the exit status
  is non-zero when a row was refused, so nothing is half-applied silently.
- ``rxtrail registry show WHAT KEY``: a fact as the registry holds it now.

The CLI talks to the event store directly (an operator of the platform); ``--as`` names the authority the change is
recorded for (``changed_by``), with the same rules as over HTTP (an agency changes its own region's facts).
"""

from __future__ import annotations

import csv
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

registry_app = typer.Typer(help="The authority's registries: seed, send one change, bulk CSV import, show.",
                           no_args_is_help=True)
out = Console()
err = Console(stderr=True)

LIST_SEPARATOR = ";"


def _commands() -> dict[str, Any]:
    from services.api.routes.registry import SLUG_COMMANDS

    return SLUG_COMMANDS


def _application() -> Any:
    from services.bootstrap import build_application
    from services.infra.settings import Settings

    s = Settings()  # the embedded parts' addresses when no external ones are set (as `rxtrail up` started them)
    return build_application(s.model_copy(update={"database_url": s.resolved_database_url(),
                                                  "kafka_bootstrap": s.resolved_kafka_bootstrap()}))


def unregistered(party: Any) -> str | None:
    """Why ``party`` may not get an API key (None: it may): keys only for registered parties — a hospital
    (institution), pharmacy or pharmacist of the registries, the agency of a known pooling region; regulators as
    before (their ids are the authority's own)."""
    from services.application.access import PartyKind
    from services.application.unit_of_work import UnitOfWork
    from services.domain import registries as r
    from services.reference import load_reference
    from services.reference.policies import available_regions

    if party.kind is PartyKind.REGULATOR:
        return None
    if party.kind is PartyKind.AGENCY:
        known = set(available_regions()) | {region.code for region in load_reference().regions}
        return None if party.id in known else f"no pooling region {party.id} is known ({', '.join(sorted(known))})"
    cls: dict[PartyKind, Any] = {PartyKind.HOSPITAL: r.Institution, PartyKind.PHARMACY: r.Pharmacy,
                                 PartyKind.PHARMACIST: r.Pharmacist}
    aggregate = cls[party.kind]
    app = _application()
    try:
        found = UnitOfWork(app.store).get(aggregate, aggregate.id_for(party.id))
    finally:
        app.close()
    if found is None:
        return (f"{party.kind.value} {party.id} is not registered (register it first: POST /registry/... or "
                "rxtrail registry send)")
    return None


def _fields(cls: Any) -> dict[str, Any]:
    return {name: info for name, info in cls.model_fields.items() if name not in ("kind", "changed_by", "command_id")}


def _is_list(annotation: Any) -> bool:
    text = str(annotation)
    return "tuple[" in text or "list[" in text or typing.get_origin(annotation) in (tuple, list)


def row_body(cls: Any, row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as a command body: known columns only (an unknown column is an error), empty = unset."""
    fields = _fields(cls)
    unknown = sorted(set(row) - set(fields))
    if unknown:
        raise ValueError(f"unknown column(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(fields)}")
    body: dict[str, Any] = {}
    for name, value in row.items():
        text = (value or "").strip()
        if not text:
            continue
        annotation = fields[name].annotation
        if _is_list(annotation):
            body[name] = [part.strip() for part in text.split(LIST_SEPARATOR) if part.strip()]
        elif "bool" in str(annotation) and text.lower() in ("true", "false", "yes", "no", "1", "0"):
            body[name] = text.lower() in ("true", "yes", "1")
        else:
            body[name] = text
    return body


def _command(what: str, sender: str, body: dict[str, Any], key: str | None) -> Any:
    commands = _commands()
    if what not in commands:
        raise typer.BadParameter(f"unknown registry kind {what!r}; one of: {', '.join(sorted(commands))}")
    return commands[what].model_validate({**body, "changed_by": sender, "command_id": key})


def _sender(party: str) -> str:
    from services.adapters.api_keys import parse_party

    try:
        parse_party(party)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return party


@registry_app.command("kinds")
def kinds() -> None:
    """The registry changes WHAT may name, with their fields (* required)."""
    table = Table("what", "command", "fields")
    for what, cls in sorted(_commands().items()):
        table.add_row(what, cls.__name__, ", ".join(f"{n}{'*' if i.is_required() else ''}"
                                                    for n, i in _fields(cls).items()))
    out.print(table)


@registry_app.command("seed")
def seed_command(version: str | None = typer.Option(None, "--reference-version",
                                                    help="reference data version (default: the shipped default)")
                 ) -> None:
    """Load the reference data as registry events (idempotent: a second run records nothing)."""
    from services.reference import load_reference
    from services.reference.seed import seed

    app = _application()
    try:
        report = seed(app, load_reference(version),
                      progress=lambda done, total: err.print(f"[dim]… {done}/{total}[/]"))
    finally:
        app.close()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items()))
    out.print(f"reference {report.version} as registry events: {counts}")
    for line in report.refused:
        err.print(f"[red]refused[/] {line}")
    if not report.ok:
        raise typer.Exit(1)


@registry_app.command("send")
def send(what: str = typer.Argument(..., help="as in POST /registry/<what> (rxtrail registry kinds)"),
         party: str = typer.Option(..., "--as", help="the authority: agency:<region> or regulator:<id>"),
         body: str = typer.Option(..., "--json", help="the command's fields as a JSON object"),
         key: str | None = typer.Option(None, "--key", help="idempotency key (a repeat records nothing)")) -> None:
    """Send one registry change."""
    sender = _sender(party)
    try:
        fields = json.loads(body)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--json is not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise typer.BadParameter("--json must be an object")
    try:
        command = _command(what, sender, fields, key)
    except ValueError as exc:
        err.print(f"[red]invalid:[/] {exc}")
        raise typer.Exit(2) from exc
    app = _application()
    try:
        outcome = app.handle(command)
    finally:
        app.close()
    if not outcome.ok:
        err.print(f"[red]refused:[/] {outcome.error} {outcome.rule_id or ''} {outcome.reason}")
        raise typer.Exit(1)
    out.print(f"{outcome.command_type} ok: {outcome.aggregate_id}" + (" (replayed)" if outcome.replayed else ""))


@registry_app.command("import")
def import_csv(path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
               kind: str = typer.Option(..., "--kind", help="what every row is (rxtrail registry kinds)"),
               party: str = typer.Option(..., "--as", help="the authority: agency:<region> or regulator:<id>"),
               dry_run: bool = typer.Option(False, "--dry-run", help="validate every row, apply nothing")) -> None:
    """Bulk import: one registry command per CSV row, each with its outcome; nothing when any row is invalid."""
    from pydantic import ValidationError

    sender = _sender(party)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
    if not rows:
        err.print("[red]no rows[/] (the first line names the fields)")
        raise typer.Exit(2)
    commands, invalid = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            cls = _commands().get(kind)
            if cls is None:
                raise typer.BadParameter(f"unknown --kind {kind!r}; one of: {', '.join(sorted(_commands()))}")
            commands.append(_command(kind, sender, row_body(cls, row), f"import:{digest}:{sender}:{number}"[:200]))
        except ValidationError as exc:
            invalid.append((number, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                              for e in exc.errors(include_input=False))))
        except ValueError as exc:
            invalid.append((number, str(exc)))
    table = Table("line", "outcome", "detail", title=f"{path.name}: {len(rows)} row(s) of {kind}")
    if invalid:
        for number, reason in invalid:
            table.add_row(str(number), "[red]invalid[/]", reason)
        out.print(table)
        err.print(f"[red]{len(invalid)} invalid row(s): nothing was applied[/]")
        raise typer.Exit(2)
    if dry_run:
        out.print(f"{len(commands)} row(s) valid; nothing applied (--dry-run)")
        return
    app = _application()
    try:
        outcomes = [o for start in range(0, len(commands), 200) for o in app.apply_batch(commands[start:start + 200])]
    finally:
        app.close()
    refused = 0
    for number, outcome in enumerate(outcomes, start=2):
        if outcome.ok:
            table.add_row(str(number), "already applied" if outcome.replayed else "applied", str(outcome.aggregate_id))
        else:
            refused += 1
            table.add_row(str(number), "[red]refused[/]", f"{outcome.error} {outcome.rule_id or ''} {outcome.reason}")
    out.print(table)
    if refused:
        err.print(f"[red]{refused} row(s) refused[/] (the others applied; re-running the file applies only what is "
                  "still missing)")
        raise typer.Exit(1)


@registry_app.command("show")
def show(what: str = typer.Argument(..., help="institutions, physicians, pharmacists, pharmacies, "
                                              "delivery-enterprises, drugs, chronic-diseases, emergencies"),
         key: str = typer.Argument(..., help="its id (a region for chronic-diseases and emergencies)")) -> None:
    """A registry fact as the registry holds it now (JSON)."""
    from services.application.unit_of_work import UnitOfWork
    from services.domain import registries as r

    aggregates: dict[str, Any] = {"institutions": r.Institution, "physicians": r.Physician, "pharmacists": r.Pharmacist,
                  "pharmacies": r.Pharmacy, "delivery-enterprises": r.DeliveryEnterprise, "drugs": r.DrugListing,
                  "chronic-diseases": r.ChronicDiseaseList, "emergencies": r.EmergencyDeclarations}
    if what not in aggregates:
        raise typer.BadParameter(f"one of: {', '.join(aggregates)}")
    cls = aggregates[what]
    app = _application()
    try:
        found = UnitOfWork(app.store).get(cls, cls.id_for(key))
    finally:
        app.close()
    if found is None:
        err.print(f"[red]not registered:[/] {what} {key}")
        raise typer.Exit(1)
    out.print_json(json.dumps(found.model_dump(mode="json", exclude={"id", "head_hash"}), ensure_ascii=False))
