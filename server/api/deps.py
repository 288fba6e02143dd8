"""Dependency aliases for the routes: the session, the caller, the settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from rlkeel.server.api.errors import Forbidden, Unauthorized
from rlkeel.server.auth import Role, verify_token
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


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.name}#{self.key_id}"


def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    session: Session = request.app.state.session_factory()
    try:
        key = verify_token(session, credentials.credentials)
        if key is None:
            raise Unauthorized("invalid or revoked token")
        return Principal(key_id=key.id, name=key.name, role=Role(key.role))
    finally:
        session.close()


def require(*roles: Role) -> Callable[..., Principal]:
    """A dependency that admits the given roles (admin is always admitted)."""
    allowed = frozenset(roles) | {Role.admin}

    def _check(principal: Annotated[Principal, Depends(_authenticate)]) -> Principal:
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
