"""Refuse NUL characters anywhere in a request (422): PostgreSQL cannot store them in text or
jsonb, and no legitimate name, id or note contains one.

Checked before routing, on the raw bytes: the path and query string (`%00`) and, for bodies,
the JSON escape `\\u0000` (a raw NUL byte is already invalid JSON). The body is scanned as it
streams in, chunk by chunk, with a short overlap so an escape split across chunks is seen.
"""

from __future__ import annotations

import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# `\u0000` preceded by an even number of backslashes is the escape; after an odd number it is
# the literal text "\\u0000" (an escaped backslash, then "u0000"), which is harmless.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_OVERLAP = 64
DETAIL = "NUL characters (\\u0000) are not allowed in any string"


class _HasNul(HTTPException):
    """Raised from `receive`; an HTTPException so the app renders it as the 422 envelope."""

    def __init__(self) -> None:
        super().__init__(422, f"body: {DETAIL}")


def has_nul_escape(data: bytes) -> bool:
    return b"u0000" in data and _NUL_ESCAPE.search(data) is not None


class RejectNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope.get("path", "").encode()
        if b"%00" in raw_path or b"\x00" in raw_path or "\x00" in scope.get("path", ""):
            await _reject(send, "path")
            return
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            await _reject(send, "query")
            return
        tail = b""
        started = False

        async def scanning_receive() -> Message:
            nonlocal tail
            message = await receive()
            if message["type"] == "http.request":
                window = tail + message.get("body", b"")
                if has_nul_escape(window):
                    raise _HasNul()
                tail = window[-_OVERLAP:]
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, scanning_receive, tracking_send)
        except _HasNul:
            if not started:
                await _reject(send, "body")


async def _reject(send: Send, where: str) -> None:
    body = json.dumps({"error": "ValidationError", "detail": f"{where}: {DETAIL}",
                       "fields": [where]}).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
