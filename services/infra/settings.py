"""One Settings class for every process (prefix ``RXTRAIL_``).

An unset database URL or Kafka bootstrap means "start the embedded part".
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RXTRAIL_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="postgresql://user:pass@host:port/db; unset = embedded PostgreSQL"
    )
    kafka_bootstrap: str | None = Field(default=None, description="host:port[,host:port]; unset = embedded Tansu")
    data_dir: Path = Field(default=Path(".rxtrail"), description="embedded parts keep their data here")
    postgres_port: int = Field(default=55432, ge=1, le=65535)
    kafka_port: int = Field(default=59092, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8700, ge=1, le=65535)
    partitions: int = Field(default=12, ge=1, le=1000)
    start_timeout_s: float = Field(default=30.0, gt=0)
    pseudonym_secret: SecretStr | None = Field(
        default=None, description="HMAC key for patient pseudonyms; unset = generated once into the data dir"
    )
    checkpoint_interval_s: float = Field(default=300.0, gt=0, description="seconds between signed checkpoints")

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
        import os
        import secrets

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
