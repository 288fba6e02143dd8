"""API keys: random tokens shown once, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlkeel.server.db.models import ApiKey


class Role(StrEnum):
    viewer = "viewer"
    trainer = "trainer"
    operator = "operator"
    admin = "admin"


TOKEN_PREFIX = "rlk"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, *, role: Role, name: str) -> str:
    """Store a new key and return its token; the token is never stored or shown again."""
    prefix = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(name=name, role=role.value, prefix=prefix, token_hash=hash_token(token)))
    session.flush()
    return token


def verify_token(session: Session, token: str) -> ApiKey | None:
    parts = token.split("_")
    if len(parts) < 3 or parts[0] != TOKEN_PREFIX:
        return None
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == parts[1])).one_or_none()
    if key is None or key.revoked_at is not None:
        # Hash anyway so a miss costs the same as a hit.
        hmac.compare_digest(hash_token(token), "0" * 64)
        return None
    return key if hmac.compare_digest(hash_token(token), key.token_hash) else None
