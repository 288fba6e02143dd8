"""Every route is authenticated; roles are enforced; tokens are hashed and never logged."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from rlkeel.server.auth import Role, hash_token
from rlkeel.server.db.models import ApiKey

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/metrics"}  # fmt: skip


def _required_roles(route: APIRoute) -> frozenset[Role] | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        roles = getattr(dep.call, "required_roles", None)
        if roles is not None:
            return frozenset(roles)
        stack.extend(dep.dependencies)
    return None


def _flatten(routes):  # type: ignore[no-untyped-def]
    """Newer FastAPI wraps included routers; walk into them."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        else:
            yield route


def _api_routes(app) -> list[tuple[str, str, APIRoute]]:  # type: ignore[no-untyped-def]
    out = []
    for route in _flatten(app.routes):
        if isinstance(route, APIRoute) and route.path not in PUBLIC:
            for method in sorted(route.methods):
                out.append((method, route.path, route))
    return out


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_declares_roles(app) -> None:  # type: ignore[no-untyped-def]
    routes = _api_routes(app)
    assert routes, "no routes found"
    missing = [f"{m} {p}" for m, p, r in routes if _required_roles(r) is None]
    assert missing == [], f"routes without an auth dependency: {missing}"


async def test_every_route_rejects_missing_bad_and_wrong_role(app, tokens) -> None:  # type: ignore[no-untyped-def]
    by_role = {Role.viewer: tokens.viewer, Role.trainer: tokens.trainer,
               Role.operator: tokens.operator, Role.admin: tokens.admin}  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for method, path, route in _api_routes(app):
            url = _concrete(path)
            r = await c.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"] == "Unauthorized"
            r = await c.request(method, url, headers={"Authorization": "Bearer rlk_nope_nope"})
            assert r.status_code == 401, (method, path)
            roles = _required_roles(route)
            assert roles is not None
            for role, token in by_role.items():
                r = await c.request(method, url, headers={"Authorization": f"Bearer {token}"})
                if role in roles:
                    assert r.status_code not in (401, 403), (method, path, role)
                else:
                    assert r.status_code == 403, (method, path, role, r.status_code)
                    assert r.json()["error"] == "Forbidden"


def test_only_a_hash_is_stored(app, tokens) -> None:  # type: ignore[no-untyped-def]
    with app.state.session_factory() as s:
        keys = list(s.scalars(select(ApiKey)))
    stored = {k.token_hash for k in keys}
    assert hash_token(tokens.trainer) in stored
    for k in keys:
        for value in (k.token_hash, k.prefix, k.name):
            assert tokens.trainer not in value


async def test_tokens_never_appear_in_logs(app, tokens, caplog, live_server) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        await c.get("/v1/runs", headers={"Authorization": f"Bearer {tokens.viewer}"})
        await c.get("/v1/runs", headers={"Authorization": f"Bearer {tokens.viewer}x"})
    assert caplog.records, "expected some log records to inspect"
    secret = tokens.viewer.split("_")[-1]
    assert all(secret not in rec.getMessage() for rec in caplog.records)


def test_keys_create_prints_the_token_alone(pg_database) -> None:  # type: ignore[no-untyped-def]
    env = {"RLKEEL_DATABASE_URL": pg_database.url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "rlkeel.cli.main", "keys", "create", "--role",
                          "operator", "--name", "ops"], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    token = out.stdout.strip()
    assert out.stdout == token + "\n" and re.fullmatch(r"rlk_[0-9a-f]{12}_[\w-]{43}", token)
    from rlkeel.server.db.engine import make_engine, make_session_factory
    from rlkeel.server.settings import Settings

    engine = make_engine(Settings(database_url=pg_database.url))
    with make_session_factory(engine)() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.token_hash == hash_token(token))).one()
    engine.dispose()
    assert (key.role, key.name) == ("operator", "ops")


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Token x"])
async def test_malformed_authorization_is_401(http, header) -> None:  # type: ignore[no-untyped-def]
    r = await http.get("/v1/runs", headers={"Authorization": header})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
