"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is the base64
HMAC-SHA256 of it under the secret's bytes, sent as `v1,<base64>`. While a secret is being
rotated the header carries one signature per valid secret, separated by spaces, and a receiver
accepts the message if any of them matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as random

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(random.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX) :])


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], *, message_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, message_id=message_id, timestamp=timestamp, body=body) for s in secrets)


def headers(secrets: list[str], *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            secrets, message_id=message_id, timestamp=timestamp, body=body
        ),
    }
