"""Shared fixtures: a fresh PostgreSQL database per test session, the real app, real keys.

PostgreSQL is required. If it is unreachable the suite fails: it never skips silently.
Set RLKEEL_TEST_PG_URL to point elsewhere (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PG_ADMIN_URL = os.environ.get(
    "RLKEEL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _pg_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@dataclass
class PgDatabase:
    name: str
    url: str


def create_pg_database(prefix: str = "rlkeel_test") -> PgDatabase:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with _pg_connect(PG_ADMIN_URL) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is required for the tests and is unreachable at "
                    f"{PG_ADMIN_URL}: {exc}", pytrace=False)  # fmt: skip
    return PgDatabase(name=name, url=_db_url(name))


def drop_pg_database(db: PgDatabase) -> None:
    with _pg_connect(PG_ADMIN_URL) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    """One migrated database for the whole test session."""
    from rlkeel.server.db.migrate import upgrade
    from rlkeel.server.settings import Settings

    db = create_pg_database()
    try:
        upgrade(Settings(database_url=db.url))
        yield db
    finally:
        drop_pg_database(db)


@pytest.fixture
def fresh_pg_database() -> Iterator[PgDatabase]:
    """An empty database (no migrations) for tests of the migrations themselves."""
    db = create_pg_database()
    try:
        yield db
    finally:
        drop_pg_database(db)


def _truncate_all(url: str) -> None:
    from rlkeel.server.db.base import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with _pg_connect(url) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture
def settings(pg_database: PgDatabase):  # type: ignore[no-untyped-def]
    from rlkeel.server.settings import Settings

    _truncate_all(pg_database.url)
    return Settings(database_url=pg_database.url)


@pytest.fixture
def app(settings):  # type: ignore[no-untyped-def]
    from rlkeel.server.app import create_app

    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@dataclass
class Tokens:
    viewer: str
    trainer: str
    operator: str
    admin: str


@pytest.fixture
def tokens(app) -> Tokens:  # type: ignore[no-untyped-def]
    from rlkeel.server.auth import Role, create_api_key

    with app.state.session_factory.begin() as session:
        made = {r.value: create_api_key(session, role=r, name=f"test-{r.value}") for r in Role}
    return Tokens(**made)


@pytest.fixture
async def http(app, tokens):  # type: ignore[no-untyped-def]
    """An httpx.AsyncClient on the real app in-process, as the trainer role by default."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://rlkeel.test",
        headers={"Authorization": f"Bearer {tokens.trainer}"},
    ) as client:  # fmt: skip
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The real app under uvicorn on a loopback port, in a thread."""

    def __init__(self, app, port: int | None = None) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()
