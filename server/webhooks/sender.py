"""One HTTP attempt of a signed delivery.

The URL is checked before the attempt, and the connection itself only goes to an address that
passes the check: the client's network backend resolves the host and checks every address
again right before connecting, so a DNS answer that changes between the two (DNS rebinding)
cannot reach the metadata service. TLS still verifies the certificate against the host name.
Redirects are not followed (they could point anywhere).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from rlkeel.server.webhooks import signing
from rlkeel.server.webhooks.urls import UrlPolicy, UrlRefused, check_address, check_url, resolve

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class AttemptOutcome:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the URL policy allows, resolving the host itself."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        try:
            addresses = await asyncio.to_thread(resolve, host, port)
            for address in addresses:
                check_address(address, self.policy)
        except UrlRefused as exc:
            raise httpcore.ConnectError(f"refused: {exc}") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        # httpx builds its connection pool with the default backend; ours checks addresses.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(),
                                                  network_backend=GuardedBackend(policy))  # fmt: skip


def guarded_client(policy: UrlPolicy) -> httpx.AsyncClient:
    """The client deliveries go through: no proxies from the environment, checked addresses."""
    return httpx.AsyncClient(transport=GuardedTransport(policy), trust_env=False)


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _outcome(started: float, ok: bool, code: int | None, error: str | None) -> AttemptOutcome:
    return AttemptOutcome(ok, code, error and error[:MAX_ERROR_CHARS],
                          (time.perf_counter() - started) * 1000.0)  # fmt: skip


async def send(
    client: httpx.AsyncClient,
    *,
    url: str,
    payload: dict[str, Any],
    message_id: str,
    secrets: list[str],
    policy: UrlPolicy,
    timeout_s: float,
) -> AttemptOutcome:
    started = time.perf_counter()
    try:
        # One deadline for the whole attempt (httpx's timeouts are per phase): a receiver that
        # trickles its answer cannot hold the attempt past its claim's lease.
        async with asyncio.timeout(timeout_s):
            ok, code, error = await _post(client, url=url, payload=payload,
                                          message_id=message_id, secrets=secrets, policy=policy,
                                          timeout_s=timeout_s)  # fmt: skip
    except TimeoutError:
        ok, code, error = False, None, f"no answer within {timeout_s:g} s"
    return _outcome(started, ok, code, error)


async def _post(
    client: httpx.AsyncClient, *, url: str, payload: dict[str, Any], message_id: str,
    secrets: list[str], policy: UrlPolicy, timeout_s: float,
) -> tuple[bool, int | None, str | None]:  # fmt: skip
    try:
        await asyncio.to_thread(check_url, url, policy)  # DNS may have changed since creation
    except UrlRefused as exc:
        return False, None, f"refused: {exc}"
    body = encode_body(payload)
    headers = signing.headers(secrets, message_id=message_id, timestamp=int(time.time()),
                              body=body)  # fmt: skip
    headers["user-agent"] = "rlkeel-webhooks/1"
    try:
        async with client.stream("POST", url, content=body, headers=headers, timeout=timeout_s,
                                 follow_redirects=False) as response:  # fmt: skip
            code = response.status_code
            if 200 <= code < 300:
                return True, code, None
            head = b""
            async for chunk in response.aiter_bytes():  # only the start of an error body
                head += chunk
                if len(head) >= MAX_ERROR_CHARS:
                    break
    except httpx.HTTPError as exc:
        return False, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return False, code, f"HTTP {code}: {head[:MAX_ERROR_CHARS].decode('utf-8', 'replace')}"
