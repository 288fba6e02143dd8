"""Secrets: tokens hashed at rest and never logged or echoed; production refuses default or
empty secrets (settings.production_problems())."""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from rlkeel.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
STRONG = "postgresql://rlkeel:Zq8-long-random-secret@db.internal:5432/rlkeel"


def _problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name in ("PGPASSWORD", "PGPASSFILE", "RLKEEL_WEBHOOK_SECRETS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(environment="development", **_settings_env(env)).production_problems()


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("RLKEEL_").lower(): v for k, v in env.items() if k.startswith("RLKEEL_")
            and k != "RLKEEL_WEBHOOK_SECRETS_KEY"}  # fmt: skip


def _webhook_key_required() -> bool:
    return "webhook_secrets_key" in Settings.model_fields


def _webhook_key() -> dict[str, str]:
    """A fresh Fernet key (32 random bytes, url-safe base64), as Fernet.generate_key() makes."""
    return {"RLKEEL_WEBHOOK_SECRETS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:////tmp/x.sqlite", "not SQLite"),
        ("postgresql://postgres@127.0.0.1:5432/rlkeel", "no password"),
        ("postgresql://postgres:@127.0.0.1:5432/rlkeel", "no password"),
        ("postgresql://postgres:postgres@127.0.0.1:5432/rlkeel", "default password"),
        ("postgresql://rlkeel:changeme@db/rlkeel", "default password"),
        ("postgresql://rlkeel:Password@db/rlkeel", "default password"),
    ],
)
def test_production_problems_name_the_weak_secret(monkeypatch, url, words) -> None:  # type: ignore[no-untyped-def]
    problems = _problems(monkeypatch, RLKEEL_DATABASE_URL=url, **_webhook_key())
    assert len(problems) == 1 and words in problems[0], problems


def test_a_strong_configuration_has_no_problems(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert _problems(monkeypatch, RLKEEL_DATABASE_URL=STRONG, **_webhook_key()) == []
    # libpq's own ways to carry the password count too
    no_pw = "postgresql://rlkeel@db/rlkeel"
    assert _problems(monkeypatch, RLKEEL_DATABASE_URL=no_pw, PGPASSWORD="s3cret-enough",
                     **_webhook_key()) == []  # fmt: skip
    assert _problems(monkeypatch, RLKEEL_DATABASE_URL=no_pw + "?sslcert=/etc/c.pem",
                     **_webhook_key()) == []  # fmt: skip


def test_a_default_pgpassword_is_refused_too(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    problems = _problems(monkeypatch, RLKEEL_DATABASE_URL="postgresql://rlkeel@db/rlkeel",
                         PGPASSWORD="postgres", **_webhook_key())  # fmt: skip
    assert problems == ["PGPASSWORD is a default password"]


def _compose_server_env(values: dict[str, str]) -> dict[str, str]:
    """The server's environment in docker-compose.yml, its required `${VAR:?...}` filled in."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["server"]["environment"]
    fill = re.compile(r"\$\{(\w+):\?[^}]*\}")
    return {k: fill.sub(lambda m: values[m.group(1)], str(v)) for k, v in env.items()}


@pytest.mark.parametrize(("password", "ok"), [("k8s-generated-4f1c9a", True), ("postgres", False)])
def test_docker_compose_server_passes_the_production_check(monkeypatch, password, ok) -> None:  # type: ignore[no-untyped-def]
    env = _compose_server_env({"POSTGRES_PASSWORD": password, "RLKEEL_READER_PASSWORD": "r-9x",
                               **_webhook_key()})  # fmt: skip
    assert env["RLKEEL_ENVIRONMENT"] == "production"
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ok:
        assert Settings().production_problems() == []
    else:
        with pytest.raises(ValueError, match="PGPASSWORD is a default password"):
            Settings()


def test_webhook_secrets_key_is_required_once_webhooks_exist(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    problems = _problems(monkeypatch, RLKEEL_DATABASE_URL=STRONG)
    if _webhook_key_required():
        assert problems == ["RLKEEL_WEBHOOK_SECRETS_KEY must be set (a Fernet key)"]
    else:
        assert problems == []


def test_production_settings_refuse_to_load_with_problems(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(ValueError, match="refuses to start.*default password"):
        Settings(environment="production", database_url="postgresql://u:postgres@db/x")
    with pytest.raises(ValueError, match="not SQLite"):
        Settings(environment="production", database_url="sqlite:///x.sqlite")
    Settings(environment="development", database_url="postgresql://postgres@127.0.0.1/x")


def test_create_app_refuses_production_settings_changed_after_loading(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rlkeel.server.app import create_app

    monkeypatch.delenv("PGPASSWORD", raising=False)
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:5432/none")
    settings.environment = "production"  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="refusing to start in production.*no password"):
        create_app(settings)


def test_rlkeel_serve_refuses_to_start_in_production_with_default_secrets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RLKEEL_ENVIRONMENT": "production",
           "RLKEEL_DATABASE_URL": "postgresql://postgres:postgres@127.0.0.1:5432/rlkeel",
           "RLKEEL_PORT": "1"}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "rlkeel.cli.main", "serve"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "refuses to start" in out.stderr and "default password" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert "postgres:postgres" not in out.stderr  # the secret itself is not printed


def test_tokens_are_stored_only_as_hashes(app, tokens, pg_database) -> None:  # type: ignore[no-untyped-def]
    """Read the table with plain SQL: no column of any key holds a token or its secret part."""
    secrets = [t.rsplit("_", 1)[1] for t in vars(tokens).values()]
    with psycopg.connect(pg_database.url) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) == 4
    dump = repr(rows)
    assert all(secret not in dump for secret in secrets)


async def test_tokens_are_never_logged_or_echoed(app, tokens, caplog, live_server) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)  # every logger, the server's, uvicorn's and httpx's
    forged = tokens.admin.rsplit("_", 1)[0] + "_" + "B" * 43
    bodies = []
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as c:
        for token in (tokens.viewer, tokens.viewer + "x", forged, tokens.operator):
            headers = {"Authorization": f"Bearer {token}"}
            for method, path in [("GET", "/v1/runs"), ("POST", "/v1/runs"),
                                 ("GET", "/v1/audit"), ("GET", "/v1/runs/nope")]:  # fmt: skip
                r = await c.request(method, path, headers=headers)
                bodies.append(r.text + repr(dict(r.headers)))
    assert caplog.records, "expected some log records to inspect"
    logged = "\n".join(rec.getMessage() + repr(rec.args) for rec in caplog.records)
    for token in (tokens.viewer, tokens.operator, forged):
        secret = token.rsplit("_", 1)[1]
        assert secret not in logged
        assert all(secret not in body for body in bodies)


def test_database_errors_do_not_carry_statement_parameters(app) -> None:  # type: ignore[no-untyped-def]
    """A failing statement's exception (and so any logged traceback) omits its parameters."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as caught, app.state.engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table WHERE token_hash = :h"),
                     {"h": "secret-parameter-value"})  # fmt: skip
    assert "no_such_table" in str(caught.value)
    assert "secret-parameter-value" not in str(caught.value)
