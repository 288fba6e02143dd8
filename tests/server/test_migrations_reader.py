"""Migration 0004: the read-only `rlkeel_reader` role that Grafana logs in through."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine

from rlkeel.server.db.migrate import downgrade, upgrade
from rlkeel.server.db.reader_role import READER_ROLE, ensure_reader_login
from rlkeel.server.settings import Settings
from tests.conftest import PG_ADMIN_URL, _db_url


def _privileges(url: str, table: str) -> tuple[bool, bool]:
    """(SELECT, INSERT) of the reader role on `table`; none when the role is gone (downgrade
    drops it once no database in the cluster refers to it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,)).fetchone():
            return False, False
        row = conn.execute(
            "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'INSERT')",
            (READER_ROLE, table, READER_ROLE, table),
        ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


@pytest.fixture
def login_name() -> object:
    name = f"rlkmetrics_grafana_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_reader_reads_charted_tables_and_nothing_else(fresh_pg_database, login_name) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=fresh_pg_database.url)
    upgrade(settings)
    for table in ("runs", "steps", "samples", "findings", "commands", "command_events",
                  "audit_log", "webhook_deliveries"):  # fmt: skip
        assert _privileges(fresh_pg_database.url, table) == (True, False), table
    for secret in ("api_keys", "webhooks", "detector_state"):
        assert _privileges(fresh_pg_database.url, secret) == (False, False), secret

    engine = create_engine(settings.normalized_database_url)
    try:
        assert ensure_reader_login(engine, login_name, "pw-1") is True
        assert ensure_reader_login(engine, login_name, "pw-2") is False  # updates the password
        with pytest.raises(ValueError, match="superuser"):
            ensure_reader_login(engine, "postgres", "x")
        with pytest.raises(ValueError, match="role name"):
            ensure_reader_login(engine, 'x"; DROP TABLE runs; --', "x")
    finally:
        engine.dispose()

    base, _, _ = PG_ADMIN_URL.partition("://")[2].partition("@")
    as_reader = _db_url(fresh_pg_database.name).replace(f"{base}@", f"{login_name}@")
    with psycopg.connect(as_reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM api_keys")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO audit_log (at, actor, role, action, target_type, "
                         "target_id) VALUES (now(), 'x', 'x', 'x', 'x', 'x')")  # fmt: skip
        conn.execute("SET default_transaction_read_only = off")  # and still not allowed:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM runs")

    downgrade(settings, "0003")
    assert _privileges(fresh_pg_database.url, "runs") == (False, False)
    upgrade(settings)  # the role already exists: upgrading again is fine
    assert _privileges(fresh_pg_database.url, "runs") == (True, False)


def test_reader_login_cli_takes_the_password_from_the_environment(
    fresh_pg_database, login_name
) -> None:  # type: ignore[no-untyped-def]
    upgrade(Settings(database_url=fresh_pg_database.url))
    env = {"RLKEEL_DATABASE_URL": fresh_pg_database.url, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "rlkeel.cli.main", "db", "reader-login", login_name]
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "RLKEEL_READER_PASSWORD" in missing.stderr
    made = subprocess.run(cmd, env={**env, "RLKEEL_READER_PASSWORD": "s3cret"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f"created read-only login {login_name}" in made.stderr
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (login_name, READER_ROLE))
        assert row.fetchone() == (True,)
