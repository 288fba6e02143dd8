"""A login for dashboards: a member of the read-only `rlkeel_reader` role (migration 0004)."""

from __future__ import annotations

import re

from psycopg import sql
from sqlalchemy import Engine

READER_ROLE = "rlkeel_reader"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ensure_reader_login(engine: Engine, name: str, password: str) -> bool:
    """Create (or update the password of) LOGIN role `name`, a member of `rlkeel_reader` and
    nothing else; True when it was created. Needs CREATEROLE; PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        raise ValueError("read-only logins exist on PostgreSQL only")
    if not _NAME.match(name) or name == READER_ROLE:
        raise ValueError(f"role name {name!r}: lower-case letters, digits and _, not {READER_ROLE}")
    if not password:
        raise ValueError("an empty password is not allowed")
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,))
            if cur.fetchone() is None:
                raise RuntimeError(f"role {READER_ROLE} is missing: run `rlkeel db upgrade`")
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (name,))
            row = cur.fetchone()
            if row is not None and row[0]:
                raise ValueError(f"role {name!r} is a superuser: choose another name")
            verb = "CREATE" if row is None else "ALTER"
            # NOINHERIT would stop the member using the reader's grants; nothing else is granted.
            cur.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                "PASSWORD {}").format(sql.SQL(verb), sql.Identifier(name),
                                                      sql.Literal(password)))  # fmt: skip
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_ROLE),
                                                         sql.Identifier(name)))  # fmt: skip
            cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(name)))  # fmt: skip
        conn.commit()  # type: ignore[union-attr]
        return row is None
    finally:
        raw.close()
