"""Refuse a request to the API (`/v1/...`) that carries no bearer token at all, with the 401
envelope, before its body is read or parsed.

The routes' own `require(...)` dependency still verifies every token and role; this gate only
makes sure an anonymous caller learns nothing (a malformed body would otherwise get FastAPI's
422, which runs before dependencies) and costs no parsing.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIX = "/v1/"


def _has_bearer_token(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and bool(token.strip())
    return False


class RequireBearer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("path", "").startswith(API_PREFIX)
                and not _has_bearer_token(scope)):  # fmt: skip
            body = json.dumps({"error": "Unauthorized", "detail": "missing bearer token",
                               "fields": []}).encode()  # fmt: skip
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", b"Bearer"),
                                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
