"""deploy/compose.yaml checked against the code (no container engine here: nothing is started, files are read).

Every stage's command is a real `rxtrail run` service (projection names from the registry) and every service and
projection has its container; every environment name of the rxtrail containers is a Settings field (sections as
RXTRAIL_SECTION__FIELD) and the resolved environment validates; every topic the code names is created by the init
job with replication 3 and min.insync.replicas 2 on three KRaft brokers; deploy/.env.example names every setting.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from events import topics
from projections import registry
from services.bootstrap import SERVICES
from services.infra.kafka_admin import default_replication, ensure_topics_async
from services.infra.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IMAGE = "rxtrail:latest"
NOT_SETTINGS = {"CREATE_TABLE", "PYTHONUNBUFFERED"}
"""Environment names of the rxtrail containers that are not rxtrail settings (eventsourcing's, Python's)."""
ONE_SHOT = {"db-init", "kafka-init"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def example() -> dict[str, str]:
    """deploy/.env.example: NAME -> value, for set lines and commented-out defaults alike."""
    found: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if m := re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line):
            found[m.group(1)] = m.group(2).strip().strip("'")
    return found


def setting_names() -> set[str]:
    """Every environment name Settings reads: RXTRAIL_FIELD, and RXTRAIL_SECTION__FIELD for nested sections."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    names = set()
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names |= {f"{prefix}{name}{delimiter}{sub}".upper() for sub in section.model_fields}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def rxtrail_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == IMAGE}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, with ``env`` as the .env file."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value).replace("$$", "$")


def test_every_stage_is_a_cli_service_and_every_service_has_a_stage(compose: dict[str, Any]) -> None:
    from typer.main import get_command

    from services.cli import app

    assert "run" in get_command(app).commands  # type: ignore[attr-defined]
    services, projections = set(), set()
    for name, svc in rxtrail_services(compose).items():
        command = svc.get("command")
        assert isinstance(command, list) and command, f"{name}: command must be an exec-form list"
        if command[:2] == ["rxtrail", "run"]:
            service, *arg = command[2:]
            assert service in SERVICES, f"{name}: `rxtrail run {service}` is not a service ({', '.join(SERVICES)})"
            if service == "projection":
                assert len(arg) == 1 and arg[0] in registry.NAMES, f"{name}: one projection name of {registry.NAMES}"
                projections.add(arg[0])
            else:
                assert not arg, f"{name}: {service} takes no argument"
            services.add(service)
        else:
            assert command[:2] == ["python", "-m"], f"{name}: {command}"
            assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
    assert services == set(SERVICES), f"services without a container: {set(SERVICES) - services}"
    assert projections == set(registry.NAMES), "one container per projection"


def test_every_environment_name_is_a_setting_and_validates(compose: dict[str, Any], example: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    names = setting_names()
    dotenv = {k: v for k, v in example.items() if v != ""}
    for name, svc in rxtrail_services(compose).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        unknown = {k for k in env if k not in names and k not in NOT_SETTINGS}
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        for key in list(Settings.model_fields):
            monkeypatch.delenv(f"RXTRAIL_{key.upper()}", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, interpolate(str(value), dotenv))
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.database_url and "@postgres:5432/" in settings.database_url
        assert settings.kafka_bootstrap == ",".join(f"{b}:9092" for b in brokers(compose))
        assert settings.pseudonym_secret is not None, f"{name}: every stage needs the same pseudonym secret"
        assert settings.relay.idempotence == "required", "the relay must run with the idempotent producer"
        assert settings.events_topic == topics.EVENTS and settings.dlq_topic == topics.DLQ


def brokers(compose: dict[str, Any]) -> list[str]:
    return [n for n, s in compose["services"].items()
            if str(s.get("image", "")).startswith("apache/kafka:") and n != "kafka-init"]


def init_job(compose: dict[str, Any]) -> str:
    return "\n".join(compose["services"]["kafka-init"]["command"])


def created_topics(compose: dict[str, Any]) -> set[str]:
    script = init_job(compose)
    m = re.search(r"for topic in ([^;]+); do", script)
    assert m, "kafka-init creates topics in a `for topic in ...; do` loop"
    return set(shlex.split(m.group(1)))


def test_every_topic_the_code_names_is_created_by_the_init_job(compose: dict[str, Any]) -> None:
    named = {v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str) and v.startswith("rx.")
             and not v.endswith(".")}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    named |= set(topics.CORE_TOPICS) | {defaults.events_topic, defaults.dlq_topic, defaults.checkpoints_topic}
    created = created_topics(compose)
    assert named <= created, f"not created by kafka-init: {sorted(named - created)}"
    # the per-pharmacy feeds are created by the gateway with the cluster's replication (3 on three brokers);
    # the per-hospital inbound topics appear with the broker defaults checked below
    assert inspect.signature(ensure_topics_async).parameters["replication"].default is None
    assert default_replication(3) == 3 and default_replication(1) == 1
    script = init_job(compose)
    m = re.search(r"--partitions \$\{RXTRAIL_PARTITIONS:-(\d+)\}", script)
    assert m and int(m.group(1)) == defaults.partitions, "the partition count is RXTRAIL_PARTITIONS (ours by default)"
    for svc in ("kafka-1", "kafka-2", "kafka-3"):
        assert compose["services"]["kafka-init"]["depends_on"][svc]["condition"] == "service_healthy"
    for name, svc in rxtrail_services(compose).items():
        if name not in ONE_SHOT:
            assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully", name
            assert svc["depends_on"]["db-init"]["condition"] == "service_completed_successfully", name


def test_three_kraft_brokers_replication_3_min_insync_2(compose: dict[str, Any]) -> None:
    names = brokers(compose)
    assert len(names) == 3
    ids = set()
    for name in names:
        svc = compose["services"][name]
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert re.match(r"apache/kafka:4\.\d+", svc["image"]), svc["image"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, no ZooKeeper
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(f"{i}@kafka-{i}:9093" for i in (1, 2, 3))
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert any(v.endswith(":/var/lib/kafka/data") for v in svc["volumes"]), f"{name}: data on a volume"
        ids.add(env["KAFKA_NODE_ID"])
    assert ids == {"1", "2", "3"}
    script = init_job(compose)
    assert "--replication-factor 3" in script and "--config min.insync.replicas=2" in script
    assert "--if-not-exists" in script and "set -e" in script


def test_health_checks_restart_policies_and_limits(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:") and any(v.startswith("pgdata:") for v in pg["volumes"])
    assert "pgdata" in compose["volumes"]
    for name, svc in compose["services"].items():
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert {"cpus", "memory"} <= set(limits), f"{name}: cpu and memory limits"
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
            continue
        assert svc["restart"] in ("unless-stopped", "always"), name
        test = svc.get("healthcheck", {}).get("test")
        assert test and not svc["healthcheck"].get("disable"), f"{name}: a health check"
        if svc.get("image") == IMAGE:
            assert test[:4] == ["CMD", "python", "-m", "services.infra.container"] and "health" in test, name
    assert "--api" in compose["services"]["api"]["healthcheck"]["test"]


def test_env_example_names_every_setting(compose: dict[str, Any], example: dict[str, str]) -> None:
    rxtrail = {k for k in example if k.startswith("RXTRAIL_")}
    wanted = setting_names()
    assert not wanted - rxtrail, f"settings missing from deploy/.env.example: {sorted(wanted - rxtrail)}"
    extra = rxtrail - wanted - {"RXTRAIL_API_PUBLISH"}
    assert not extra, f"deploy/.env.example names what is not a setting: {sorted(extra)}"
    # every ${VAR} compose.yaml reads without a default is named there too
    text = (DEPLOY / "compose.yaml").read_text()
    for name, op in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)?", text):
        assert op == ":-" or name in example, f"compose.yaml reads ${{{name}}}: name it in .env.example"


def test_dockerfile_installs_the_package(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    build = compose["x-rxtrail"]["build"]
    assert build == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
