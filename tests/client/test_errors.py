"""Error answers of the real app map onto the client's exception tree."""

from __future__ import annotations

import httpx
import pydantic
import pytest

from rlkeel.client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RlkeelError,
    SampleStats,
    ServerError,
    ServiceUnavailableError,
    StepReport,
    UnexpectedResponseError,
    UnprocessableEntityError,
)

from .conftest import FAST, rollout, run_create, sample
from .test_flow import issue_command_directly


def test_unknown_run_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_run("no-such-run")
    err = caught.value
    assert err.status_code == 404 and err.error == "NotFound" and err.detail
    assert err.method == "GET" and err.url.endswith("/v1/runs/no-such-run")
    with pytest.raises(NotFoundError):
        client.report_step("no-such-run", rollout(0))
    with pytest.raises(NotFoundError):
        client.ack_command(10**9, "applied", step=0)


def test_bad_token_is_an_authentication_error_without_the_token(live_server) -> None:  # type: ignore[no-untyped-def]
    secret = "rk_not-a-real-key-0123456789"
    with Client(live_server.url, token=secret, **FAST) as c:  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError) as caught:
            c.list_runs()
    assert caught.value.status_code == 401 and caught.value.attempts == 1
    assert secret not in str(caught.value) and secret not in repr(caught.value)


def test_viewer_may_read_but_not_report(live_server, tokens, client: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    with Client(live_server.url, token=tokens.viewer, **FAST) as viewer:  # type: ignore[arg-type]
        assert viewer.get_run(run.id).id == run.id
        with pytest.raises(PermissionDeniedError) as caught:
            viewer.report_step(run.id, rollout(0))
    assert caught.value.status_code == 403 and caught.value.error == "Forbidden"
    assert client.list_steps(run.id).items == []


def test_negative_length_is_refused_naming_the_field(client: Client) -> None:
    run = client.register_run(run_create())
    # model_construct skips local validation, as an older or hand-rolled client would.
    bad = sample(1).model_dump()
    bad["length"] = -5
    report = rollout(0, n=1)
    report.samples.append(SampleStats.model_construct(**bad))
    with pytest.raises(UnprocessableEntityError) as caught:
        client.report_step(run.id, report)
    err = caught.value
    assert err.status_code == 422 and err.error == "ValidationError"
    assert err.fields == ["samples.1.length"] and "samples.1.length" in str(err)
    assert client.list_steps(run.id).items == []


def test_invalid_fields_fail_locally_before_sending(client: Client) -> None:
    with pytest.raises(pydantic.ValidationError):
        client.report_step("any", {"step": -1, "phase": "rollout", "algorithm": "grpo"})
    with pytest.raises(pydantic.ValidationError):
        client.register_run(name="x", algorithm="not-an-algorithm", model={"name": "m"})


def test_body_over_the_limit_is_payload_too_large(client: Client) -> None:
    run = client.register_run(run_create())
    report = rollout(0, n=1)
    report.samples[0].extra["blob"] = "x" * (17 * 1024 * 1024)  # over the 16 MiB default
    with pytest.raises(PayloadTooLargeError) as caught:
        client.report_step(run.id, report)
    assert caught.value.status_code == 413 and caught.value.fields == ["body"]
    assert caught.value.attempts == 1
    assert client.list_steps(run.id).items == []


def test_conflicting_command_ack_is_a_conflict(app, client: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    command_id = issue_command_directly(app, run.id)
    client.ack_command(command_id, "applied", step=0)
    with pytest.raises(ConflictError) as caught:
        client.ack_command(command_id, "failed", step=0)
    assert caught.value.status_code == 409 and caught.value.fields == ["status"]


def _answering(status: int, body: bytes, content_type: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, "BadRequestError"), (404, NotFoundError), (409, ConflictError), (418, APIError),
     (500, ServerError), (502, ServerError), (503, ServiceUnavailableError)],
)  # fmt: skip
def test_non_json_error_bodies_map_by_status(status: int, cls: type | str) -> None:
    import rlkeel.client as api

    expected = getattr(api, cls) if isinstance(cls, str) else cls
    transport = _answering(status, b"<html>proxy says no</html>", "text/html")
    with Client("http://proxy.test", token="t", transport=transport, retries=0) as c:
        with pytest.raises(expected) as caught:
            c.get_run("r")
    err = caught.value
    assert type(err) is expected and isinstance(err, RlkeelError)
    assert err.status_code == status and err.fields == [] and "proxy says no" in err.detail


async def test_envelope_fields_map_in_the_async_client_too() -> None:
    body = b'{"error": "ValidationError", "detail": "step: bad", "fields": ["step"]}'
    transport = _answering(422, body, "application/json")
    async with AsyncClient("http://x.test", token="t", transport=transport) as c:
        with pytest.raises(UnprocessableEntityError) as caught:
            await c.report_step("r", rollout(0))
    assert caught.value.fields == ["step"] and caught.value.detail == "step: bad"


def test_an_answer_off_the_schema_is_an_unexpected_response() -> None:
    transport = _answering(200, b'{"id": 1}', "application/json")
    with Client("http://x.test", token="t", transport=transport) as c:
        with pytest.raises(UnexpectedResponseError, match="Run"):
            c.get_run("r")
    transport = _answering(200, b"not json", "text/plain")
    with Client("http://x.test", token="t", transport=transport) as c:
        with pytest.raises(UnexpectedResponseError, match="not JSON"):
            c.healthz()


def test_readyz_reads_503_as_not_ready() -> None:
    transport = _answering(503, b'{"status": "unavailable"}', "application/json")
    with Client("http://x.test", token="t", transport=transport, backoff=0.001) as c:
        assert c.readyz() is False


def test_step_report_from_dict_and_model_send_the_same_body() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(201, json={"step": 0})

    with Client("http://x.test", token="t", transport=httpx.MockTransport(handler)) as c:
        report = rollout(0, n=1)
        c.report_step("r", report)
        c.report_step("r", report.model_dump())
    assert seen[0] == seen[1]
    assert b'"loss":"NaN"' in seen[0] and b'"grad_norm":"Infinity"' in seen[0]
    assert b'"custom_low":"-Infinity"' in seen[0]
    assert StepReport.model_validate_json(seen[0]) is not None
