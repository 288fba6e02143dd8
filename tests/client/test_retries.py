"""Retries: only idempotent calls, only on connection errors, timeouts and 5xx.

`Flaky` stands where the network would fail: in front of the real app, it answers 503 (or
drops the connection) a set number of times, then lets requests through.
"""

from __future__ import annotations

import httpx
import pytest

from rlkeel.client import (
    AsyncClient,
    Client,
    NotFoundError,
    RequestTimeoutError,
    ServiceUnavailableError,
    TransportError,
)
from rlkeel.client._transport import backoff_delay
from tests.conftest import free_port

from .conftest import FAST, rollout, run_create

SECRET = "rk_secret-token-never-shown"


class Flaky:
    """Fails the first `failures` requests, then delegates to `inner`.

    mode "503": answers 503 without reaching the app; "refuse": raises httpx.ConnectError;
    "lose": forwards the request, then drops the answer (the app did the work).
    """

    def __init__(self, failures: int, mode: str = "503") -> None:
        self.failures = failures
        self.mode = mode
        self.requests: list[str] = []

    def fail(self, request: httpx.Request) -> httpx.Response | None:
        self.requests.append(f"{request.method} {request.url.path}")
        if len(self.requests) > self.failures:
            return None
        if self.mode == "503":
            return httpx.Response(503, json={"error": "ServiceUnavailable",
                                             "detail": "the database is unavailable; retry later",
                                             "fields": []})  # fmt: skip
        if self.mode == "refuse":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return None  # "lose": decided after forwarding


class FlakySync(Flaky, httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, failures: int, mode: str = "503") -> None:
        super().__init__(failures, mode)
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        failed = self.fail(request)
        if failed is not None:
            return failed
        response = self.inner.handle_request(request)
        if self.mode == "lose" and len(self.requests) <= self.failures:
            response.read()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


class FlakyAsync(Flaky, httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int, mode: str = "503") -> None:
        super().__init__(failures, mode)
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        failed = self.fail(request)
        if failed is not None:
            return failed
        return await self.inner.handle_async_request(request)


def flaky_client(live_server, token: str, failures: int, mode: str = "503") -> tuple[Client, Flaky]:  # type: ignore[no-untyped-def]
    transport = FlakySync(httpx.HTTPTransport(), failures, mode)
    return Client(live_server.url, token=token, transport=transport, **FAST), transport  # type: ignore[arg-type]


def test_report_step_is_retried_through_two_503s(live_server, tokens, client: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=2)
    with flaky_c:
        verdict = flaky_c.report_step(run.id, rollout(0))
    assert verdict.step == 0
    assert flaky.requests == [f"POST /v1/runs/{run.id}/steps"] * 3  # 2 retries
    assert len(client.list_steps(run.id).items) == 1


def test_register_run_is_never_retried(live_server, tokens, client: Client) -> None:  # type: ignore[no-untyped-def]
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=2)
    with flaky_c, pytest.raises(ServiceUnavailableError) as caught:
        flaky_c.register_run(run_create("once"))
    assert flaky.requests == ["POST /v1/runs"] and caught.value.attempts == 1
    assert client.list_runs(project="client-tests") == []


def test_refused_connection_is_not_retried_for_register_run(live_server, tokens) -> None:  # type: ignore[no-untyped-def]
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=1, mode="refuse")
    with flaky_c, pytest.raises(TransportError):
        flaky_c.register_run(run_create())
    assert len(flaky.requests) == 1


def test_a_lost_answer_is_retried_and_the_report_stored_once(
    live_server, tokens, client: Client  # type: ignore[no-untyped-def]
) -> None:
    run = client.register_run(run_create())
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=1, mode="lose")
    with flaky_c:
        verdict = flaky_c.report_step(run.id, rollout(3))
    assert verdict.step == 3 and len(flaky.requests) == 2
    assert len(client.list_steps(run.id).items) == 1
    assert len(client.list_samples(run.id, 3)) == 8


def test_gets_and_acks_are_retried(live_server, tokens, client: Client, app) -> None:  # type: ignore[no-untyped-def]
    from .test_flow import issue_command_directly

    run = client.register_run(run_create())
    command_id = issue_command_directly(app, run.id)
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=3, mode="timeout")
    with flaky_c:
        assert flaky_c.get_run(run.id).id == run.id  # 3 timeouts, then through
        flaky.failures = len(flaky.requests) + 1
        assert flaky_c.ack_command(command_id, "applied", step=0).status == "applied"
    assert len(flaky.requests) == 6


def test_4xx_is_never_retried(live_server, tokens) -> None:  # type: ignore[no-untyped-def]
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=0)
    with flaky_c, pytest.raises(NotFoundError):
        flaky_c.report_step("no-such-run", rollout(0))
    assert len(flaky.requests) == 1


def test_retries_run_out(live_server, tokens) -> None:  # type: ignore[no-untyped-def]
    flaky_c, flaky = flaky_client(live_server, tokens.trainer, failures=100, mode="timeout")
    with flaky_c, pytest.raises(RequestTimeoutError) as caught:
        flaky_c.list_runs()
    assert len(flaky.requests) == 4 and caught.value.attempts == 4
    assert "after 4 attempts" in str(caught.value)


def test_connection_refused_raises_transport_error_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, token=SECRET, retries=2, backoff=0.001) as c:
        with pytest.raises(TransportError) as caught:
            c.get_run("r")
    err = caught.value
    assert err.attempts == 3 and isinstance(err.__cause__, httpx.ConnectError)
    assert SECRET not in str(err)


async def test_async_report_step_retried_register_run_not(app, tokens) -> None:  # type: ignore[no-untyped-def]
    flaky = FlakyAsync(httpx.ASGITransport(app=app), failures=0)
    async with AsyncClient("http://rlkeel.test", token=tokens.trainer, transport=flaky,
                           **FAST) as c:  # type: ignore[arg-type]  # fmt: skip
        run = await c.register_run(run_create())
        flaky.failures = len(flaky.requests) + 2  # the next two requests get a 503
        with pytest.raises(ServiceUnavailableError):
            await c.register_run(run_create())
        assert len(flaky.requests) == 2  # not retried
        flaky.failures = len(flaky.requests) + 2
        assert (await c.report_step(run.id, rollout(0))).step == 0
        assert len(flaky.requests) == 5  # 2 retries
        assert [r.id for r in await c.list_runs()] == [run.id]


async def test_async_connection_refused() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", token=SECRET, retries=1,
                           backoff=0.001) as c:  # fmt: skip
        with pytest.raises(TransportError) as caught:
            await c.healthz()
    assert caught.value.attempts == 2


def test_backoff_grows_exponentially_with_jitter() -> None:
    for attempt in range(5):
        full = 0.2 * 2**attempt
        delays = [backoff_delay(attempt, 0.2) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
    assert backoff_delay(20, 0.2) <= 30.0
    answer = httpx.Response(503, headers={"retry-after": "2"})
    assert backoff_delay(0, 0.01, answer) == 2.0


def test_a_non_transport_httpx_failure_is_wrapped_and_not_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.DecodingError("bad gzip", request=request)

    with Client("http://x.test", token=SECRET, transport=httpx.MockTransport(handler),
                **FAST) as c:  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises(TransportError, match="DecodingError"):
            c.get_run("r")
    assert calls == [1]
