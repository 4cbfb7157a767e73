"""One Settings class for every process (prefix ``RXTRAIL_``), with a nested section per service.

An unset database URL or Kafka bootstrap means "start the embedded part". A section's field is set from the
environment with a double underscore: ``RXTRAIL_SETTLEMENT__PERSONAL_ACCOUNT_BALANCE=1500``,
``RXTRAIL_EXPIRY__INTERVAL_S=30``, ``RXTRAIL_SETTLEMENT__INSTITUTION_LEVELS='{"INST1": "secondary"}'``.
Every default is ILLUSTRATIVE configuration.
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from events import topics
from services.reference.policies import InstitutionLevel


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SettlementSection(Section):
    """The settlement worker (rx.events → SettlePrescription / SettleConsultation)."""

    personal_account_balance: Decimal = Field(
        default=Decimal("2000.00"), ge=0,
        description="an employee's personal-account balance at the start of each year (no account feed exists)")
    default_institution_level: InstitutionLevel = Field(
        default=InstitutionLevel.TERTIARY,
        description="level of a physical institution not listed in institution_levels (prices the consultation)")
    institution_levels: dict[str, InstitutionLevel] = Field(
        default_factory=dict, description='JSON: {"<physical institution id>": "secondary"}')
    group_id: str = "rxtrail.settlement"
    schema_name: str = Field(default="settlement_worker", description="PostgreSQL schema of its state and offsets")
    max_records: int = Field(default=500, ge=1)


class ProjectionsSection(Section):
    """The projection consumers (one consumer group and one schema per projection)."""

    group_prefix: str = Field(default="rxtrail.projection", description="consumer group = <prefix>.<name>")
    max_records: int = Field(default=2000, ge=1, description="records per batch (one transaction)")


class RelaySection(Section):
    """The relay (event store → rx.events)."""

    name: str = "relay"
    batch_size: int = Field(default=500, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)
    check_interval_s: float = Field(default=15.0, gt=0, description="how often the broker is checked for data loss")
    max_backoff_s: float = Field(default=10.0, gt=0)
    logs: tuple[str, ...] = Field(default=(), description="event tables to relay; empty = every *_events table")
    commit_delay_s: float = Field(default=0.0, ge=0, description="fault injection for tests only: pause between "
                                                                   "the broker's ack and the position commit")
    idempotence: Literal["auto", "required"] = Field(
        default="auto", description="auto: idempotent producer (acks=all always) when the broker grants one; "
                                    "required: refuse to relay without it (production, Apache Kafka)")


class RouterSection(Section):
    group_id: str = "rxtrail.router"
    schema_name: str = "router"
    max_records: int = Field(default=500, ge=1)


class GatewaySection(Section):
    group_id: str = "rxtrail.gateway"
    schema_name: str = "gateway"
    feed_prefix: str = topics.PHARMACY_PREFIX
    feed_partitions: int = Field(default=1, ge=1)
    max_records: int = Field(default=500, ge=1)


class IntakeSection(Section):
    group_id: str = "rxtrail-intake"
    max_records: int = Field(default=500, ge=1)


class ExpirySection(Section):
    """The expiry worker (sends ExpirePrescription once a prescription's validity has elapsed)."""

    interval_s: float = Field(default=60.0, gt=0, description="seconds between sweeps")
    grace_s: float = Field(default=60.0, ge=0, description="expire only this long after the validity ended "
                                                          "(the write side's clock may lag the worker's)")
    sweep_limit: int = Field(default=500, ge=1, description="prescriptions expired per sweep at most")
    stranded_interval_s: float = Field(
        default=300.0, gt=0, description="region shards only: seconds between releases of trace codes a cross-shard "
                                         "sale reserved but whose dispense never reached its region")
    stranded_age_s: float = Field(default=300.0, gt=0, description="release a reservation only when its sale is "
                                                                   "this old (no writer can still be in between)")
    stranded_lookback_s: float = Field(
        default=86400.0, gt=0, description="the first release round after a start looks this far back past "
                                           "stranded_age_s; each later round covers the sales since the previous")
    group_id: str = "rxtrail.expiry"
    schema_name: str = "expiry"
    max_records: int = Field(default=500, ge=1)


class SupervisorSection(Section):
    """`rxtrail up`'s supervisor: restarts with exponential backoff, no lifetime cap."""

    poll_s: float = Field(default=0.5, gt=0, description="how often the children are checked")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="wait before the first restart after a crash")
    backoff_max_s: float = Field(default=30.0, ge=0, description="longest wait between restarts")
    healthy_after_s: float = Field(default=60.0, gt=0, description="a child that ran this long before exiting "
                                                                    "is restarted after backoff_initial_s again")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RXTRAIL_", env_file=".env", extra="ignore",
                                      env_nested_delimiter="__")

    database_url: str | None = Field(
        default=None, description="postgresql://user:pass@host:port/db; unset = embedded PostgreSQL"
    )
    kafka_bootstrap: str | None = Field(default=None, description="host:port[,host:port]; unset = embedded broker")
    kafka_launcher: Literal["tansu", "apache"] = Field(
        default="tansu", description="the embedded broker `rxtrail up` starts when kafka_bootstrap is unset: Tansu, "
                                     "or Apache Kafka 4.x from Maven Central jars (needs Java 17+ and Maven)")
    kafka_brokers: int = Field(default=1, ge=1, le=5, description="Apache Kafka launcher: brokers in the cluster "
                                                                  "(3 = replication 3, min.insync.replicas 2)")
    data_dir: Path = Field(default=Path(".rxtrail"), description="embedded parts keep their data here")
    postgres_port: int = Field(default=55432, ge=1, le=65535)
    kafka_port: int = Field(default=59092, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8700, ge=1, le=65535)
    api_workers: int = Field(default=0, ge=0, le=64, description="API processes sharing the port (one write-side "
                                                                 "pool each); 0 = one per CPU core")
    api_pool_size: int = Field(default=10, ge=1, le=200, description="database connections per API process (the "
                                                                     "event store's pool and the read pool each)")
    partitions: int = Field(default=12, ge=1, le=1000)
    events_topic: str = Field(default=topics.EVENTS, description="the topic the relay fills and the workers read")
    dlq_topic: str = Field(default=topics.DLQ, description="where consumers dead-letter what they cannot decode")
    start_timeout_s: float = Field(default=60.0, gt=0, description="how long a starting part may take to answer")
    pseudonym_secret: SecretStr | None = Field(
        default=None, description="HMAC key for patient pseudonyms; unset = generated once into the data dir"
    )
    checkpoint_interval_s: float = Field(default=300.0, gt=0, description="seconds between signed checkpoints")
    checkpoints_topic: str = Field(default=topics.CHECKPOINTS, description="where signed checkpoints are published")
    log_level: str = Field(default="INFO", description="logging level of every process")
    shards: dict[str, str] = Field(
        default_factory=dict, description='region shards of the write side, JSON {"<pooling region>": "<database '
        'URL>"}; each region\'s visits and prescriptions go to its own event store, the rest (registries, trace '
        'codes, the shard directory, other regions) to database_url; unset = one shard (deploy/SCALING.md)')

    settlement: SettlementSection = SettlementSection()
    projections: ProjectionsSection = ProjectionsSection()
    relay: RelaySection = RelaySection()
    router: RouterSection = RouterSection()
    gateway: GatewaySection = GatewaySection()
    intake: IntakeSection = IntakeSection()
    expiry: ExpirySection = ExpirySection()
    supervisor: SupervisorSection = SupervisorSection()

    @property
    def resolved_api_workers(self) -> int:
        return self.api_workers or os.cpu_count() or 1

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    def resolved_database_url(self) -> str:
        """The external URL, or the embedded server's (as `rxtrail up` starts it)."""
        return self.database_url or f"postgresql://postgres@127.0.0.1:{self.postgres_port}/rxtrail"

    def resolved_kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    def resolved_pseudonym_secret(self) -> bytes:
        """The configured secret, else one generated once (32 random bytes) into `<data_dir>/pseudonym.key`."""
        if self.pseudonym_secret is not None:
            return self.pseudonym_secret.get_secret_value().encode()
        path = Path(self.data_dir).absolute() / "pseudonym.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


def eventsourcing_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment eventsourcing's PostgreSQL persistence module reads, from our database URL."""
    u = urlparse(database_url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (u.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or "postgres",
        "POSTGRES_PASSWORD": u.password or "",
    }
    env.update(extra)
    return env
