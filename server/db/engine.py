"""Engine and session factory for the configured store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from rlkeel.server.settings import Settings


def ensure_sqlite_directory(url: str) -> None:
    """SQLite creates the file but not its folder: make the folder (first run on a machine)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(settings: Settings) -> Engine:
    url = settings.normalized_database_url
    if url.startswith("sqlite"):
        ensure_sqlite_directory(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True,
            hide_parameters=True,
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout_s,
        # A stuck statement is cancelled: the API answers 503 instead of hanging.
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
    }
    return create_engine(
        url,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_connect_timeout_s,
        pool_pre_ping=True,
        # Statement parameters (token hashes, sealed secrets, user data) never appear in
        # exception messages, so never in a logged traceback.
        hide_parameters=True,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, open transactions (see _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


def _sqlite_begin_immediate(conn: Any) -> None:
    """SQLite has no row locks: take the write lock at BEGIN, so transactions that read then
    write (ingest) are serialised instead of failing on upgrade from a stale snapshot."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
