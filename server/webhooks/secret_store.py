"""Webhook signing secrets at rest: encrypted with Fernet, never returned after creation.

The key comes from `RLKEEL_WEBHOOK_SECRETS_KEY` (several keys separated by commas: the first
encrypts, all decrypt, so the key itself can be rotated). Outside production an unset key is
generated once into the data directory, so `rlkeel serve` works with no setup; production
refuses to run without one.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from rlkeel.server.settings import Environment, Settings

DEV_KEY_FILE = "webhook-secrets.key"


class SecretKeyMissing(RuntimeError):
    pass


def default_dev_key_path() -> Path:
    return Path(platformdirs.user_data_dir("rlkeel", appauthor=False)) / DEV_KEY_FILE


def _read_or_create_dev_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(Fernet.generate_key().decode() + "\n")
    return path.read_text().strip()


def load_keys(settings: Settings, *, dev_key_path: Path | None = None) -> list[str]:
    configured = settings.webhook_secrets_key
    if configured is not None and configured.get_secret_value().strip():
        return [k.strip() for k in configured.get_secret_value().split(",") if k.strip()]
    if settings.environment is Environment.production:
        raise SecretKeyMissing(
            "RLKEEL_WEBHOOK_SECRETS_KEY must be set when RLKEEL_ENVIRONMENT=production "
            '(make one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())")'
        )
    return [_read_or_create_dev_key(dev_key_path or default_dev_key_path())]


class SecretBox:
    """Encrypts and decrypts `whsec_` secrets; made on first use (most requests need none)."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError as exc:
            raise ValueError(f"RLKEEL_WEBHOOK_SECRETS_KEY is not a Fernet key: {exc}") from None

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError(
                "a stored webhook secret does not decrypt with the configured key"
            ) from None


def sealed(box: SecretBox, secret: str, *, expires_at: datetime | None = None) -> dict[str, Any]:
    """The stored form of one secret: ciphertext and, for a rotated-out one, its end."""
    return {"ciphertext": box.encrypt(secret),
            "expires_at": expires_at.isoformat() if expires_at else None}  # fmt: skip


def is_valid(entry: dict[str, Any], now: datetime) -> bool:
    end = entry.get("expires_at")
    return end is None or datetime.fromisoformat(end) > now


def valid_secrets(box: SecretBox, entries: list[dict[str, Any]], now: datetime) -> list[str]:
    """Plain secrets that still sign, newest first (at most two during a rotation)."""
    return [box.decrypt(e["ciphertext"]) for e in entries if is_valid(e, now)]
