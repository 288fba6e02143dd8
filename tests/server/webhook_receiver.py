"""A real HTTP receiver on loopback that verifies every delivery with `standardwebhooks`,
an independent implementation of the Standard Webhooks spec."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook as Verifier

from tests.conftest import free_port


@dataclass
class Received:
    message_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    verified_by: list[int]
    """Indexes of the receiver's secrets whose signature matched."""


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    secrets: list[str] = field(default_factory=list)
    status: int = 204
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(raw, headers)
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _record(self, raw: bytes, headers: dict[str, str]) -> None:
        matched = []
        for i, secret in enumerate(self.secrets):
            try:
                Verifier(secret).verify(raw, headers)
                matched.append(i)
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            if not matched:
                self.rejected.append(headers.get("webhook-id", "?"))
                return
            self.received.append(Received(headers["webhook-id"], headers, json.loads(raw), matched))

    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(r.message_id for r in self.received)

    def wait_for(self, n: int, timeout_s: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"expected {n} verified deliveries, got {len(self.received)} "
                             f"(rejected: {self.rejected})")  # fmt: skip
