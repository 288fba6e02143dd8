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
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from rlkeel.server.auth import Role, hash_token
from rlkeel.server.db.models import ApiKey

# The only routes that answer without a token. Anything else must declare its roles with
# `require(...)` (server/api/deps.py); a new route that does not fails the tests below.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect",
          "/redoc"}  # fmt: skip


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
    """Newer FastAPI wraps included routers; walk into them (and into mounted apps)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        elif isinstance(route, Mount):
            yield route
            yield from _flatten(route.routes)
        else:
            yield route


def unauthenticated_routes(app) -> list[str]:  # type: ignore[no-untyped-def]
    """Every route outside PUBLIC that does not declare the roles it admits."""
    problems = []
    for route in _flatten(app.routes):
        path = getattr(route, "path", repr(route))
        if path in PUBLIC:
            continue
        if not isinstance(route, APIRoute):
            problems.append(f"{path}: a {type(route).__name__}, not an APIRoute with roles")
        elif _required_roles(route) is None:
            problems.append(f"{','.join(sorted(route.methods))} {path}: no require(...) dependency")
    return problems


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
    assert len(_api_routes(app)) >= 15, "the walk found too few routes"
    assert unauthenticated_routes(app) == []


def test_a_new_route_without_auth_is_caught(app) -> None:  # type: ignore[no-untyped-def]
    @app.get("/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    async def raw(_: object) -> PlainTextResponse:
        return PlainTextResponse("")

    app.router.routes.append(Route("/v1/raw", raw))
    assert unauthenticated_routes(app) == [
        "GET /v1/forgotten: no require(...) dependency",
        "/v1/raw: a Route, not an APIRoute with roles",
    ]


async def test_public_routes_answer_without_a_token(app) -> None:  # type: ignore[no-untyped-def]
    paths = {getattr(r, "path", None) for r in _flatten(app.routes)} & PUBLIC
    assert {"/healthz", "/readyz", "/openapi.json"} <= paths
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for path in sorted(paths - {"/docs/oauth2-redirect"}):
            r = await c.get(path)
            assert r.status_code == 200, (path, r.status_code)


async def test_every_route_rejects_missing_bad_and_wrong_role(app, tokens) -> None:  # type: ignore[no-untyped-def]
    by_role = {Role.viewer: tokens.viewer, Role.trainer: tokens.trainer,
               Role.operator: tokens.operator, Role.admin: tokens.admin}  # fmt: skip
    # A token of the right shape and a real key's prefix, but the wrong secret.
    forged = tokens.admin.rsplit("_", 1)[0] + "_" + "A" * 43
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for method, path, route in _api_routes(app):
            url = _concrete(path)
            r = await c.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"] == "Unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            if method in ("POST", "PUT", "PATCH"):  # a body, even a broken one, changes nothing
                for content in (b"{}", b"{not json", b"[" * 10_000):
                    r = await c.request(method, url, content=content,
                                        headers={"Content-Type": "application/json"})  # fmt: skip
                    assert r.status_code == 401, (method, path, content[:10], r.status_code)
            for bad in ("rlk_nope_nope", forged, ""):
                r = await c.request(method, url, headers={"Authorization": f"Bearer {bad}"})
                assert r.status_code == 401, (method, path, bad)
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
