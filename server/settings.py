"""Service settings, read from the environment with the prefix ``RLKEEL_``."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @model_validator(mode="after")
    def _production_is_not_a_toy(self) -> Settings:
        if self.environment is Environment.production and self.is_sqlite:
            raise ValueError(
                "RLKEEL_DATABASE_URL must point at PostgreSQL when RLKEEL_ENVIRONMENT=production"
            )
        return self

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
