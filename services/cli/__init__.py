"""`rxtrail` command line (Typer). Each command builds what it needs from Settings; nothing at import time."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from projections.registry import NAMES as PROJECTION_NAMES
from services.cli.investigate import investigate
from services.cli.registry import registry_app, unregistered
from services.cli.rules import rules
from services.infra.errors import InfraError
from services.infra.runtime import configure_logging
from services.infra.settings import Settings

app = typer.Typer(help="rxtrail: event-sourced Internet+ prescription circulation.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
_PROJECTIONS = " | ".join(PROJECTION_NAMES)  # the registry is the one list


def _logging(verbose: bool) -> None:
    configure_logging(logging.DEBUG if verbose else logging.INFO, rich=True)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def run(
    service: str = typer.Argument(..., help="api | relay | router | settlement | gateway | intake | "
                                            "projection NAME|all | checkpoint | expiry"),
    name: str | None = typer.Argument(None, help=f"for projection: {_PROJECTIONS} | all (default)"),
) -> None:
    """Run one service until SIGTERM or Ctrl-C (`rxtrail up` starts each of its children this way)."""
    from services.bootstrap import SERVICES, run_service

    if service not in SERVICES:
        raise typer.BadParameter(f"choose one of {', '.join(SERVICES)}", param_hint="SERVICE")
    if name is not None and service != "projection":
        raise typer.BadParameter(f"{service} takes no name", param_hint="NAME")
    if service == "projection":
        from projections import registry

        try:
            registry.resolve(name or "all")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="NAME") from exc
    raise typer.Exit(run_service(service, Settings(), name))


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="run in the background; stop with `rxtrail down`"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    kafka: str | None = typer.Option(None, "--kafka", help="embedded broker: tansu (default) | apache (Apache Kafka "
                                                          "4.x from Maven jars; RXTRAIL_KAFKA_LAUNCHER)"),
    brokers: int | None = typer.Option(None, "--brokers", min=1, max=5, help="with --kafka apache: brokers "
                                       "(3 = replication 3, min.insync.replicas 2; RXTRAIL_KAFKA_BROKERS)"),
) -> None:
    """Start PostgreSQL and Kafka (embedded unless RXTRAIL_DATABASE_URL / RXTRAIL_KAFKA_BOOTSTRAP are set),
    create schemas and topics, run every service; print one ready line. Ctrl-C stops everything."""
    import os

    from services.infra import stack

    _logging(verbose)
    if kafka is not None:  # through the environment, so a detached `rxtrail up` and the children see it too
        if kafka not in ("tansu", "apache"):
            raise typer.BadParameter("tansu or apache", param_hint="--kafka")
        os.environ["RXTRAIL_KAFKA_LAUNCHER"] = kafka
    if brokers is not None:
        os.environ["RXTRAIL_KAFKA_BROKERS"] = str(brokers)
    settings = Settings()
    if settings.kafka_brokers > 1 and settings.kafka_launcher != "apache":
        raise typer.BadParameter("several brokers need --kafka apache", param_hint="--brokers")
    started = time.monotonic()
    try:
        if detach:
            state = stack.start_detached(settings, settings.start_timeout_s + 30)
            console.print(f"rxtrail ready: postgres={state['postgres']} kafka={state['kafka']} api={state['api']}",
                          highlight=False, soft_wrap=True)
            console.print(f"started in {time.monotonic() - started:.1f}s (detached; `rxtrail down` stops it)",
                          style="dim")
            return

        def on_ready(line: str) -> None:
            console.print(line, highlight=False, soft_wrap=True)
            console.print(f"started in {time.monotonic() - started:.1f}s; Ctrl-C stops", style="dim")

        code = stack.run_foreground(settings, on_ready=on_ready)
    except InfraError as exc:
        err.print(f"[bold red]rxtrail up failed:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command()
def status() -> None:
    """Show whether a stack started from this data dir is running: each service's current pid, restarts, lag
    (events still to publish or apply) and last error."""
    import psutil
    import psycopg

    from services.adapters.stage_health import consumer_stages, shard_stores, stage_report
    from services.infra.stack import read_state

    settings = Settings()
    state = read_state(settings)
    if not state:
        console.print("rxtrail is not running")
        raise typer.Exit(1)
    console.print(f"rxtrail {'ready' if state['ready'] else 'starting'}: postgres={state['postgres']} "
                  f"kafka={state['kafka']} api={state['api']}", highlight=False, soft_wrap=True)
    stages: dict[str, dict[str, Any]] = {}
    try:
        with psycopg.connect(settings.resolved_database_url(), connect_timeout=3) as conn:
            stages = stage_report(conn, consumer_stages(settings), shards=shard_stores(settings))
    except psycopg.Error as exc:
        err.print(f"lag and errors unknown: the database does not answer ({type(exc).__name__})", markup=False)
    restarts = state.get("restarts", {})
    for name, pid in state["services"].items():
        alive = pid is not None and psutil.pid_exists(pid)
        stage = stages.get(name, {})
        lag = stage.get("lag")
        line = (f"  {name:<28} pid={pid} {'running' if alive else 'restarting' if pid is None else 'DOWN'} "
                f"restarts={restarts.get(name, 0)} lag={'-' if lag is None else lag}")
        if stage.get("last_error"):
            line += f" last_error@{stage.get('last_error_at')}: {stage['last_error']}"
        if stage.get("last_exit") and stage.get("last_exit") != stage.get("last_error"):
            line += f" last_exit@{stage.get('last_exit_at')}: {stage['last_exit']}"
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def down() -> None:
    """Stop a stack started with `rxtrail up --detach`."""
    from services.infra.stack import stop_detached

    if stop_detached(Settings()):
        console.print("rxtrail stopped")
    else:
        console.print("rxtrail is not running")


@app.command()
def schemas(out: Path = typer.Option(Path("schemas"), "--out", help="folder for one JSON Schema per event")) -> None:
    """Write a JSON Schema for every event in the catalogue."""
    from events import write_schemas  # type: ignore[attr-defined]

    written = write_schemas(out)
    console.print(f"wrote {len(written)} schemas to {out}")


@app.command()
def relay(
    republish: bool = typer.Option(False, "--republish", help="publish again every event after --from, then relay"),
    from_: int = typer.Option(0, "--from", help="notification id to republish after (0 = everything)"),
    once: bool = typer.Option(False, "--once", help="with --republish: reset the position and exit"),
) -> None:
    """Relay stored events to Kafka `rx.events` in global order (runs until Ctrl-C)."""
    import asyncio

    from services.bootstrap import relay_config, run_service
    from services.relay.core import republish as do_republish

    _logging(False)
    settings = Settings()
    if republish:
        generation = asyncio.run(do_republish(relay_config(settings), from_notification_id=from_))
        console.print(f"relay reset to notification {from_} (generation {generation})")
        if once:
            return
    raise typer.Exit(run_service("relay", settings))


@app.command()
def verify(
    kafka: bool = typer.Option(False, "--kafka", help="also check what `rx.events` carries against the store"),
    bundle: Path | None = typer.Option(None, "--bundle", help="check an exported trail bundle offline"),
    public_key: Path | None = typer.Option(None, "--public-key", help="trusted checkpoint public key (raw or PEM)"),
    witness: Path | None = typer.Option(None, "--checkpoints", "--witness",
                                        help="checkpoints you kept (`rxtrail checkpoint --export FILE`): the database "
                                             "and the log must still agree with them"),
) -> None:
    """Recompute every hash chain and signed checkpoint (also against the copies on `rx.checkpoints` when Kafka is
    reachable); exit 0 intact, 1 tampered."""
    from rich.markup import escape

    if bundle is not None:
        from services.integrity.bundle import verify_bundle

        trusted = _load_public_key(public_key) if public_key else None
        report = verify_bundle(bundle, trusted_public_key=trusted)
        if report.ok:
            console.print(f"bundle {bundle}: INTACT" + ("" if trusted else " (self-consistent; no trusted key given)"),
                          markup=False, highlight=False)
        else:
            for finding in report.findings:
                err.print(escape(f"bundle {bundle}: {finding.location}: {finding.reason}"), style="red",
                          highlight=False)
        raise typer.Exit(report.exit_code)
    from services.bootstrap import shard_database_urls
    from services.integrity.verify import verify as run_verify
    from services.integrity.witness import load_witness

    settings = _resolved()
    report = run_verify(settings.database_url, settings.kafka_bootstrap if kafka else None,
                        data_dir=settings.data_dir, checkpoint_copies=settings.kafka_bootstrap,
                        checkpoints_topic=settings.checkpoints_topic,
                        witness=load_witness(witness) if witness is not None else (),
                        stores=shard_database_urls(settings) if settings.shards else None)
    for finding in report.findings:
        err.print(escape(str(finding)), style="red", highlight=False, soft_wrap=True)
    for note in report.notes:
        err.print(escape(note), style="yellow", highlight=False, soft_wrap=True)
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code)


@app.command("export-trail")
def export_trail(rx_id: str, out: Path = typer.Option(..., "--out")) -> None:
    """Write one prescription's events, hash chain, covering signed checkpoint and public key to a file (with
    region shards: from the event store that holds it, under that store's checkpoint)."""
    from services.bootstrap import shard_database_urls
    from services.integrity.bundle import export_trail as do_export

    settings = _resolved()
    path = do_export(shard_database_urls(settings) if settings.shards else str(settings.database_url),
                     settings.data_dir, rx_id, out)
    console.print(f"wrote {path}")


@app.command()
def checkpoint(
    every: float = typer.Option(0.0, "--every", help="seconds between checkpoints; 0 = once"),
    export: Path | None = typer.Option(None, "--export", help="then write every checkpoint to this file (JSON list "
                                                                "a regulator keeps; `verify --checkpoints FILE`)"),
) -> None:
    """Sign the head of the whole event log (Ed25519), store the checkpoint and publish it to `rx.checkpoints`
    (with region shards: of each event store, in its own database)."""
    import asyncio

    from services.bootstrap import checkpoint_stores, shard_database_urls
    from services.integrity.witness import export_checkpoints, publish_pending

    settings = Settings()
    if every > 0:  # the checkpoint service, at this interval
        from services.bootstrap import run_service

        raise typer.Exit(run_service("checkpoint", settings.model_copy(update={"checkpoint_interval_s": every})))
    urls = shard_database_urls(settings)
    for store, cp in checkpoint_stores(settings).items():
        console.print(f"checkpoint {store + ' ' if settings.shards else ''}{cp}", highlight=False, markup=False)
    try:
        for url in urls.values():
            asyncio.run(publish_pending(url, settings.resolved_kafka_bootstrap(), settings.checkpoints_topic,
                                        timeout_s=15.0))
    except Exception as exc:  # Kafka down: published by the next checkpoint
        err.print(f"not published to {settings.checkpoints_topic} ({type(exc).__name__}); the next checkpoint "
                  "publishes it", style="yellow", markup=False, highlight=False)
    if export is not None:
        path, count = export_checkpoints(list(urls.values()), export)
        console.print(f"wrote {count} checkpoints to {path}", highlight=False, markup=False)


@app.command("forget-patient")
def forget_patient(
    patient_ref: str = typer.Argument(None, help="the patient's pseudonym as shared streams carry it"),
    national_id: str = typer.Option(None, "--national-id", help="derive the pseudonym from the ID number instead",
                                    prompt=False, hide_input=True),
) -> None:
    """Crypto-shred a patient: delete their key, so sealed personal fields can never be read again.

    Trails, hash chains and totals still verify: events carry only the pseudonym and the ciphertext."""
    from services.bootstrap import build_vault

    vault = build_vault(Settings())
    if not patient_ref and not national_id:
        raise typer.BadParameter("give a patient pseudonym or --national-id")
    ref = patient_ref or vault.patient_ref(national_id)
    removed = vault.forget_patient(ref)
    console.print(f"patient {ref[:12]}…: {removed} key(s) deleted" if removed else
                  f"patient {ref[:12]}…: no key held (already forgotten or never sealed)")


@app.command()
def statement(
    month: str | None = typer.Option(None, "--month", help="YYYY-MM: close this month (one statement per party)"),
    party: str | None = typer.Option(None, "--party", help="only this physical institution / pharmacy / enterprise"),
    fmt: str = typer.Option("csv", "--format", help="csv | pdf"),
    out: Path | None = typer.Option(None, "--out", help="file to write (default: CSV to stdout, PDF to statement-<month>.pdf)"),
    release_deposit: int | None = typer.Option(None, "--release-deposit", metavar="YEAR",
                                        help="instead: release --party's deposit withheld over YEAR"),
    score: int | None = typer.Option(None, "--score", min=0, max=100, help="with --release-deposit: assessment score"),
    assessment_ref: str = typer.Option("", "--assessment-ref", help="with --release-deposit: the assessment's ref"),
) -> None:
    """Close a month: a StatementIssued per hospital institution and pharmacy (closing twice records nothing);
    or, with --release-deposit, release a party's year's deposit by its assessment score."""
    from services.adapters.statement_render import to_csv, to_pdf
    from services.bootstrap import build_statement_desk
    from services.domain.errors import DomainError

    if fmt not in {"csv", "pdf"}:
        raise typer.BadParameter("csv or pdf", param_hint="--format")
    if release_deposit is None and month is None:
        raise typer.BadParameter("give --month (or --release-deposit YEAR --party ID --score N)", param_hint="--month")
    desk, store = build_statement_desk(Settings())
    try:
        if release_deposit is not None:
            if party is None or score is None:
                raise typer.BadParameter("--release-deposit needs --party and --score")
            release, withheld, created = desk.release_deposit(party, release_deposit, score,
                                                              assessment_ref or f"assessment {release_deposit}")
            verb = "released" if created else "already released"
            console.print(f"deposit {party} {release_deposit}: withheld {withheld:.2f}, {verb} {release.amount:.2f} "
                          f"({release.assessment_ref})", highlight=False)
            return
        if month is None:
            raise typer.BadParameter("give --month", param_hint="--month")
        closed = desk.close_month(month, party)
    except DomainError as exc:
        err.print(f"[bold red]statement refused:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    for c in closed:
        s = c.statement
        note = "issued" if c.created else "already closed" + (
            " (figures moved since: the next statement carries them)" if c.drift else "")
        err.print(f"{s.month} {s.party_kind.value:<20} {s.party_id:<24} gross {s.gross:>12.2f} payable "
                  f"{s.payable:>12.2f}  {note}", highlight=False)
    if not closed:
        err.print(f"nothing settled in {month}" + (f" for {party}" if party else ""))
    if fmt == "csv":
        text = to_csv(closed)
        if out is None:
            console.file.write(text)
        else:
            out.write_text(text, encoding="utf-8")
    else:
        target = out or Path(f"statement-{month}" + (f"-{party}" if party else "") + ".pdf")
        target.write_bytes(to_pdf(closed))
        err.print(f"wrote {target}")


@app.command()
def replay(
    projection: str = typer.Argument(..., help=f"{_PROJECTIONS} | all"),
    as_of: datetime | None = typer.Option(None, "--as-of", help="build the view as it stood then (ISO time, "
                                                                 "UTC unless an offset is given) into its own schema"),
    from_store: bool = typer.Option(False, "--from-store", help="read the event store, not rx.events "
                                                               "(when the broker lost data)"),
) -> None:
    """Drop and rebuild a projection from rx.events (or the event store); --as-of for investigations.

    A running stack's live consumer notices the rebuilt view through the database (its epoch changed) and
    continues from the rebuilt view's offsets; nothing is signalled."""
    from datetime import UTC

    from services.replay import replay as do_replay

    _logging(False)
    settings = _resolved()
    when = as_of.replace(tzinfo=UTC) if as_of is not None and as_of.tzinfo is None else as_of
    from services.bootstrap import shard_database_urls

    try:
        results = do_replay(projection, str(settings.database_url), settings.kafka_bootstrap, as_of=when,
                            from_store=from_store, console=console,
                            stores=shard_database_urls(settings) if settings.shards else None)
    except (KeyError, ValueError) as exc:
        err.print(f"[bold red]replay failed:[/] {exc}")
        raise typer.Exit(2) from exc
    for r in results:
        per_store = "; " + ", ".join(f"{n} from store {s}" for s, n in r.stores.items()) if settings.shards else ""
        console.print(f"{r.projection}: {r.applied} events applied into schema {r.schema} from {r.source} "
                      f"({r.read} read, {r.duplicates} duplicates, {r.undecodable} undecodable{per_store}) "
                      f"in {r.seconds:.1f}s", highlight=False)


@app.command()
def asyncapi(out: Path = typer.Option(Path("asyncapi.json"), "--out")) -> None:
    """Write the AsyncAPI document of every rxtrail Kafka topic."""
    from services.adapters.asyncapi import export_asyncapi

    console.print(f"wrote {export_asyncapi(out)}")


@app.command()
def demo(
    seed: int = typer.Option(1, "--seed", "-s", help="the day's seed: the same seed and size give the same day"),
    size: int = typer.Option(2000, "--size", "-n", min=8, max=100_000,
                             help="patients (one follow-up visit and prescription each; tests use a dozen)"),
    api: str | None = typer.Option(None, "--api", help="API base URL (default http://RXTRAIL_API_HOST:PORT)"),
    timeout: float = typer.Option(180.0, "--timeout", help="seconds to wait for each worker step"),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="concurrent HTTP clients"),
) -> None:
    """Drive a realistic day through a running stack (`rxtrail up`): registries, hospitals in two regions, pharmacies,
    a delivery enterprise and patients over HTTP and the Kafka intake, with planted misbehaviour; prints a summary."""
    from services.cli.demo import DemoError, print_report, run_demo

    try:
        report = run_demo(seed, size, api, progress=lambda m: err.print(f"[dim]… {m}[/]"), timeout_s=timeout,
                          workers=workers)
    except DemoError as exc:
        err.print(f"[bold red]demo failed:[/] {exc}")
        raise typer.Exit(2) from exc
    print_report(report, console)
    if not all(plant["ok"] for plant in report.plants.values()):
        err.print("[bold red]demo: a planted misbehaviour was neither refused nor found[/] (see the table above)")
        raise typer.Exit(1)


def _load_public_key(path: Path) -> Any:
    """A trusted Ed25519 public key: PEM (as `rxtrail up` writes it), 32 raw bytes, or their base64."""
    import base64

    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return serialization.load_pem_public_key(data)
    if len(data) == 32:
        return data
    try:
        return base64.b64decode(data.strip(), validate=True)
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not a PEM, raw or base64 Ed25519 public key",
                                 param_hint="--public-key") from exc


def _resolved() -> Settings:
    """Settings with the embedded parts' addresses filled in when no external ones are set."""
    s = Settings()
    return s.model_copy(update={"database_url": s.resolved_database_url(),
                                "kafka_bootstrap": s.resolved_kafka_bootstrap()})


keys_app = typer.Typer(help="API keys per party (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(registry_app, name="registry")
app.command("rules")(rules)
app.command("investigate")(investigate)


@keys_app.command("create")
def keys_create(
    party: str = typer.Option(..., "--party", help="hospital:H001 | pharmacy:P001 | pharmacist:PH01 | "
                                                   "agency:370100 | regulator:REG01"),
    label: str = typer.Option("", "--label"),
) -> None:
    """Create an API key for a party; the key is shown once."""
    from datetime import UTC, datetime

    import psycopg

    from services.adapters import api_keys as keys

    try:
        who = keys.parse_party(party)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--party") from exc
    if (why := unregistered(who)) is not None:  # keys only for registered parties (issue 13)
        err.print(f"[bold red]no key:[/] {why}")
        raise typer.Exit(2)
    url = Settings().resolved_database_url()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            keys.ensure_schema(conn)
            token = keys.create_key(conn, who, datetime.now(UTC), label)
    except psycopg.OperationalError as exc:
        err.print(f"[bold red]cannot reach PostgreSQL[/] (is `rxtrail up` running?): {exc}")
        raise typer.Exit(2) from exc
    console.print(token, highlight=False)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the 16 hex characters after `rx_`)."""
    from datetime import UTC, datetime

    import psycopg

    from services.adapters import api_keys as keys

    with psycopg.connect(Settings().resolved_database_url(), autocommit=True, connect_timeout=5) as conn:
        keys.ensure_schema(conn)
        if not keys.revoke_key(conn, key_id, datetime.now(UTC)):
            err.print(f"no active key {key_id}")
            raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(
    ctx: typer.Context,
    broker: str = typer.Option("both", help="tansu | apache | both (both: whole suite on Tansu, then again on "
                                            "Apache Kafka the integration/e2e/faults tests whose outcome can "
                                            "depend on the broker)"),
) -> None:
    """Run the test suite on real parts (extra arguments go to pytest)."""
    import os
    import subprocess
    import sys

    if broker not in {"tansu", "apache", "both"}:
        raise typer.BadParameter("tansu, apache or both", param_hint="--broker")
    runs: list[tuple[str, list[str], dict[str, str]]] = []
    if broker in {"tansu", "both"}:
        runs.append(("tansu", [], {}))
    if broker in {"apache", "both"}:
        # the second pass of "both" leaves out what the first already proved independent of the broker
        # (tests/conftest.py: tests that use no Kafka fixture, and those marked broker_neutral)
        again = {"RXTRAIL_TEST_SECOND_BROKER": "1"} if broker == "both" else {}
        runs.append(("apache", ["-m", "integration or e2e or faults"], again))
    for kind, extra, more_env in runs:
        console.print(f"[bold]== tests on {kind} ==[/]")
        env = dict(os.environ, RXTRAIL_TEST_KAFKA=kind, **more_env)
        code = subprocess.call([sys.executable, "-m", "pytest", *extra, *ctx.args], env=env)
        if code != 0:
            err.print(f"[bold red]tests on {kind} failed (pytest exit {code})[/]")
            raise typer.Exit(code)


if __name__ == "__main__":
    app()
