"""Run the Alembic migrations shipped inside the package (no alembic.ini needed)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from rlkeel.server.db.engine import ensure_sqlite_directory
from rlkeel.server.settings import Settings


def alembic_config(database_url: str) -> Config:
    ensure_sqlite_directory(database_url)
    script_location = str(resources.files("rlkeel.migrations"))
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.normalized_database_url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings.normalized_database_url), revision)
