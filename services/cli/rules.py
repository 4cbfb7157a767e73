"""``rxtrail rules``: the rule catalogue (``services.domain.rules``), as a table or as JSON."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from services.domain.rules import Rule, catalogue


def rules(
    as_json: bool = typer.Option(False, "--json", help="print the catalogue as a JSON list (as GET /rules serves it)"),
) -> None:
    """The rules the platform enforces or flags: id, source in the policy texts, kind, parameters."""
    entries = catalogue()
    if as_json:
        typer.echo(json.dumps([rule.model_dump(mode="json") for rule in entries], ensure_ascii=False, indent=2))
        return
    Console().print(rules_table(entries))


def rules_table(entries: list[Rule]) -> Table:
    table = Table(title="rxtrail rule catalogue", show_lines=True)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("rule")
    table.add_column("source")
    table.add_column("kind", no_wrap=True)
    table.add_column("parameters", overflow="fold")
    table.add_column("enforced", no_wrap=True)
    for rule in entries:
        title = rule.title + (f"\n[dim]{rule.note}[/]" if rule.note else "")
        parameters = "\n".join(f"{p.name} = {p.value}" for p in rule.parameters)
        enforced = "[red]no[/]" if not rule.enforced else "[yellow]partly[/]" if rule.note else "[green]yes[/]"
        table.add_row(rule.id, title, rule.source, rule.kind.value, parameters, enforced)
    return table
