"""Dependency aliases for the routes: the session, the caller, the settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rlkeel.client.schemas import MAX_INT
from rlkeel.server.api.errors import Forbidden, Unauthorized
from rlkeel.server.auth import Role, hash_token, verify_token
from rlkeel.server.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; it commits once, after the route returned, before the response."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the commit runs before the response is sent, so a failed commit is
# never reported as success.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `rlkeel keys create --role ROLE`")


class TokenCache:
    """Verified tokens for a few seconds, keyed by their SHA-256 (the token itself is not kept).

    Saves a database round trip on every report; a revoked key stops working within `ttl_s`.
    """

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(hash_token(token))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token: str, principal: Principal) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[hash_token(token)] = (time.monotonic() + self.ttl_s, principal)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.name}#{self.key_id}"


async def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    cache: TokenCache = request.app.state.token_cache
    token = credentials.credentials
    principal = cache.get(token)
    if principal is not None:
        return principal
    principal = await run_in_threadpool(_lookup, request.app.state.session_factory, token)
    if principal is None:
        raise Unauthorized("invalid or revoked token")
    cache.put(token, principal)
    return principal


def _lookup(session_factory: Any, token: str) -> Principal | None:
    with session_factory() as session:
        key = verify_token(session, token)
        if key is None:
            return None
        return Principal(key_id=key.id, name=key.name, role=Role(key.role))


def require(*roles: Role) -> Callable[..., Principal]:
    """A dependency that admits the given roles (admin is always admitted)."""
    allowed = frozenset(roles) | {Role.admin}

    async def _check(principal: Annotated[Principal, Depends(_authenticate)]) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(f"role {principal.role.value!r} may not do this; needs one of: {names}")
        return principal

    _check.required_roles = allowed  # type: ignore[attr-defined]  # read by the auth test
    return _check


AnyRole = Annotated[Principal, Depends(require(Role.viewer, Role.trainer, Role.operator))]
TrainerRole = Annotated[Principal, Depends(require(Role.trainer))]
OperatorRole = Annotated[Principal, Depends(require(Role.operator))]
TrainerOrOperator = Annotated[Principal, Depends(require(Role.trainer, Role.operator))]
AdminRole = Annotated[Principal, Depends(require())]

# Path parameters: bounded, so an id past bigint is a 422, never a database error.
RunId = Annotated[str, Path(min_length=1, max_length=200, description="Run id")]
CommandId = Annotated[int, Path(ge=1, le=MAX_INT, description="Command id")]
FindingId = Annotated[int, Path(ge=1, le=MAX_INT, description="Finding id")]
WebhookId = Annotated[int, Path(ge=1, le=MAX_INT, description="Webhook subscription id")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_INT, description="Delivery id")]
