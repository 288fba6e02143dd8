"""Migrations are the only way the schema changes: they upgrade, downgrade, and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from rlkeel.server.db.base import Base
from rlkeel.server.db.migrate import downgrade, upgrade
from rlkeel.server.settings import Settings


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database_settings(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'm.sqlite'}")
    else:
        db = request.getfixturevalue("fresh_pg_database")
        yield Settings(database_url=db.url)


def _diff(settings: Settings) -> list[object]:
    engine = create_engine(settings.normalized_database_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(settings: Settings) -> set[str]:
    engine = create_engine(settings.normalized_database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_models_then_downgrade_removes_everything(empty_database_settings) -> None:  # type: ignore[no-untyped-def]
    settings = empty_database_settings
    upgrade(settings)
    assert _diff(settings) == [], "models and migrations drifted: write a migration"
    assert set(Base.metadata.tables) <= _tables(settings)
    downgrade(settings, "base")
    assert _tables(settings) <= {"alembic_version"}
    upgrade(settings)  # and back up again, cleanly
    assert _diff(settings) == []
