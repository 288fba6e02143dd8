"""Close each keep-alive connection after a number of requests, so load spreads over workers.

With `rlkeel serve --workers N` the processes share one listening socket and a new connection
goes to whichever process accepts first — usually an idle one, which is what spreads load. But
a trainer keeps its connection for the whole run, so connections made while one process was
busy or not yet started (all 32 of a fleet that connected as the server came up) stay on that
process for good, and the others idle behind their own GIL. Answering every Nth request on a
connection with `Connection: close` makes the client open a fresh one (transparently: httpx
and the SDK reconnect on the next request), which the least busy process picks up.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_TRACKED = 10_000


class RecycleConnections:
    def __init__(self, app: ASGIApp, *, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self._served: OrderedDict[tuple[str, int], int] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client or self.max_requests <= 0 or scope.get("http_version") == "2":
            await self.app(scope, receive, send)
            return
        key = (str(client[0]), int(client[1]))  # one open TCP connection of this process
        served = self._served.pop(key, 0) + 1
        last = served >= self.max_requests
        if not last:
            self._served[key] = served
            while len(self._served) > MAX_TRACKED:  # connections the clients closed
                self._served.popitem(last=False)

        async def closing_send(message: Message) -> None:
            if last and message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)
