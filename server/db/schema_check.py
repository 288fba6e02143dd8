"""Is the database at the newest migration? `rlkeel serve` asks before serving."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from rlkeel.server.db.migrate import alembic_config


def current_and_head(engine: Engine) -> tuple[str | None, str | None]:
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, script.get_current_head()
