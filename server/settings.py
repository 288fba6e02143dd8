"""Service settings, read from the environment with the prefix ``RLKEEL_``."""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class Environment(StrEnum):
    development = "development"
    production = "production"


def default_database_url() -> str:
    """A SQLite file in the user's data directory: `rlkeel serve` works with no setup."""
    data_dir = Path(platformdirs.user_data_dir("rlkeel", appauthor=False))
    return f"sqlite:///{data_dir / 'rlkeel.sqlite'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLKEEL_", extra="ignore")

    environment: Environment = Environment.development
    """`production` refuses to start with a SQLite store or default secrets."""
    database_url: str = Field(default_factory=default_database_url)
    """SQLAlchemy URL; `postgresql://...` in production. Default: a SQLite file."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Requests with a larger body get 413 before they are parsed."""
    max_samples_per_report: int = Field(default=65_536, ge=1)
    """A StepReport with more samples is refused with 422."""
    token_cache_ttl_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    """Verified API keys are remembered this long; a revoked key stops working within it."""
    db_pool_size: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=5_000, ge=100)
    """Each statement is cancelled after this long: the server answers 503, never hangs."""
    db_connect_timeout_s: int = Field(default=3, ge=1)
    request_threads: int | None = Field(default=None, ge=1, le=1000)
    """Requests one server process works on at once (its thread pool); the rest wait their
    turn in order. Default: `db_pool_size`, so a request never waits for a connection (which
    would end in 503 after the connect timeout under a burst) and pooled connections are
    reused instead of opened and closed per request."""
    keepalive_max_requests: int = Field(default=20, ge=0)
    """A keep-alive connection is closed after this many requests (0: never), so the clients'
    reconnections spread load over the server processes (`--workers`)."""
    metrics_enabled: bool = True
    """Serve Prometheus metrics at `GET /metrics`."""
    metrics_token: str | None = None
    """When set, `GET /metrics` requires `Authorization: Bearer <this token>`."""

    # Alert webhooks (README "Alert webhooks").
    public_url: str | None = None
    """Where people reach this server; links in webhook payloads. Default: http://host:port."""
    webhook_secrets_key: SecretStr | None = None
    """Fernet key that encrypts stored `whsec_` secrets. Unset outside production: a key is
    generated once into the data directory (`webhook-secrets.key`)."""
    webhook_allow_loopback: bool = False
    """Allow webhook URLs that resolve to loopback addresses (127.0.0.0/8, ::1)."""
    webhook_allow_link_local: bool = False
    """Allow link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10, ...)."""
    webhook_worker: bool = True
    """Run the delivery worker in this server process."""
    webhook_poll_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    webhook_max_attempts: int = Field(default=12, ge=1, le=50)
    """A delivery that failed this many times is dead (redeliver by hand)."""
    webhook_retry_base_s: float = Field(default=5.0, gt=0.0)
    """Back-off after the first failure; it doubles per attempt, with jitter, up to the cap."""
    webhook_retry_max_s: float = Field(default=6 * 3600.0, gt=0.0)
    webhook_retention_days: float = Field(default=30.0, ge=0.0)
    """Delivered and dead deliveries (and their attempt log) older than this are deleted;
    0 keeps them forever."""
    run_stall_after_s: float = Field(default=600.0, gt=0.0)
    """A running run with no report for this long raises `run.stalled` (once per silence)."""
    run_stall_check_interval_s: float = Field(default=30.0, gt=0.0)

    @model_validator(mode="after")
    def _production_is_not_a_toy(self) -> Settings:
        if self.environment is Environment.production:
            problems = self.production_problems()
            if problems:
                raise ValueError(
                    "RLKEEL_ENVIRONMENT=production refuses to start: " + "; ".join(problems)
                )
        return self

    def production_problems(self) -> list[str]:
        """What makes this configuration unfit for production: a toy store, default or empty
        secrets. Enforced (the settings do not load) when RLKEEL_ENVIRONMENT=production."""
        problems = []
        if self.is_sqlite:
            problems.append("RLKEEL_DATABASE_URL must point at PostgreSQL, not SQLite")
        else:
            problems += _database_password_problems(self.database_url)
        # The webhook helper's Fernet key for stored whsec_ secrets (CONTRACTS.md): required in
        # production once the setting exists.
        if "webhook_secrets_key" in type(self).model_fields:
            key = getattr(self, "webhook_secrets_key", None)
            value = key.get_secret_value() if isinstance(key, SecretStr) else key
            if not value:
                problems.append("RLKEEL_WEBHOOK_SECRETS_KEY must be set (a Fernet key)")
        return problems

    @cached_property
    def normalized_database_url(self) -> str:
        """Use the psycopg 3 driver for plain `postgresql://` URLs."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# Passwords that ship in examples and images: in production they are as good as none.
DEFAULT_PASSWORDS = frozenset({"postgres", "password", "rlkeel", "changeme", "change-me",
                               "secret", "admin", "example", "test"})  # fmt: skip


def _database_password_problems(url: str) -> list[str]:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL fails at connect; say it here
        return ["RLKEEL_DATABASE_URL is not a valid database URL"]
    password = parsed.password
    where = "RLKEEL_DATABASE_URL"
    if password is None or password == "":
        # Other ways to give PostgreSQL a secret: the libpq environment, a passfile, a client
        # certificate.
        password, where = os.environ.get("PGPASSWORD"), "PGPASSWORD"
        if not password:
            if os.environ.get("PGPASSFILE") or {"passfile", "sslcert"} & set(parsed.query):
                return []
            return ["RLKEEL_DATABASE_URL has no password (nor PGPASSWORD, a passfile or sslcert)"]
    if str(password).lower() in DEFAULT_PASSWORDS:
        return [f"{where} is a default password"]
    return []
