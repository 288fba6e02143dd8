"""Count HTTP responses by route template (bounded: never the concrete path)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlkeel.server.metrics.service import ServiceMetrics


class CountResponses:
    """Pure ASGI middleware: a few dict lookups per request, no body buffering."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        code = 500

        async def send_and_note(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            self.metrics.observe_http_response(template or "unmatched", scope["method"], code)
