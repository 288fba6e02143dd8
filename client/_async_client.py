"""The asynchronous client: the same methods as `Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from rlkeel.client import _calls
from rlkeel.client._transport import (
    JSON_HEADERS,
    RETRYABLE_TRANSPORT_ERRORS,
    Call,
    api_error,
    backoff_delay,
    base_headers,
    check_options,
    should_retry_status,
    transport_error,
)
from rlkeel.client.schemas import (
    AckStatus,
    AuditRead,
    AutomationMode,
    Command,
    CommandCreate,
    CommandStatus,
    Finding,
    FindingAck,
    FindingStatus,
    Page,
    Phase,
    Run,
    RunCreate,
    RunStatus,
    SampleRead,
    Severity,
    StepRead,
    StepReport,
    Verdict,
)

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of the rlkeel service.

    ``AsyncClient("http://127.0.0.1:8000", token=...)``; ``async with`` it or `await close()`.
    `timeout` is in seconds per request. Idempotent calls (GETs, PUTs, `report_step`,
    `ack_command`) are retried up to `retries` times on connection errors, timeouts and 5xx
    answers, waiting ``backoff * 2**n`` seconds (with jitter) before retry n; other calls and
    4xx answers are never retried. `transport` replaces httpx's network transport (tests run
    the client on the app in-process with it). Errors: see `rlkeel.client._exceptions`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        check_options(timeout, retries, backoff)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=base_headers(token, headers),
            timeout=httpx.Timeout(timeout), transport=transport,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r}, timeout={self.timeout}, retries={self.retries})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # ------------------------------------------------------------------ sending

    async def _send(self, call: Call[T]) -> T:
        headers = JSON_HEADERS if call.body is not None else None
        request = self._http.build_request(
            call.method, call.path, params=call.params, content=call.body, headers=headers,
            timeout=httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout,
        )  # fmt: skip
        max_attempts = 1 + (self.retries if call.idempotent else 0)
        for attempt in range(max_attempts):
            last = attempt + 1 == max_attempts
            try:
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                if last or not isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
                    raise transport_error(exc, request, attempts=attempt + 1) from exc
                await asyncio.sleep(backoff_delay(attempt, self.backoff))
                continue
            status = response.status_code
            if status < 400 or status in call.ok_statuses:
                return call.parse(response)
            if last or not should_retry_status(status):
                raise api_error(response, attempts=attempt + 1)
            await asyncio.sleep(backoff_delay(attempt, self.backoff, response))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ runs

    async def register_run(self, run: RunCreate | None = None, /, **fields: Any) -> Run:
        """Register a run from a `RunCreate` or its fields; never retried."""
        return await self._send(_calls.register_run(run, fields))

    async def list_runs(
        self,
        project: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Runs, newest first."""
        return await self._send(_calls.list_runs(project, status, limit, offset))

    async def get_run(self, run_id: str) -> Run:
        """One run."""
        return await self._send(_calls.get_run(run_id))

    async def set_automation(self, run_id: str, mode: AutomationMode | str) -> Run:
        """Set a run's automation mode: `auto`, `approve` or `observe` (operator)."""
        return await self._send(_calls.set_automation(run_id, mode))

    async def set_run_status(
        self, run_id: str, status: RunStatus | str, detail: str | None = None
    ) -> Run:
        """Mark how a run ended: `finished`, `stopped` or `failed` (trainer). Retried: setting
        the same status again is a no-op; a run that already ended otherwise answers 409."""
        return await self._send(_calls.set_run_status(run_id, status, detail))

    async def get_policy(self, run_id: str) -> dict[str, Any]:
        """The run's policy: thresholds and rules."""
        return await self._send(_calls.get_policy(run_id))

    async def put_policy(self, run_id: str, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the run's policy (operator); answers the stored policy."""
        return await self._send(_calls.put_policy(run_id, policy))

    # ------------------------------------------------------------------ steps

    async def report_step(
        self, run_id: str, report: StepReport | Mapping[str, Any], *, timeout: float | None = None
    ) -> Verdict:
        """Report a step; answers the verdict. Retried: a repeat returns the stored verdict.
        `timeout` (seconds) replaces the client's timeout for this call, e.g. a step's deadline."""
        return await self._send(_calls.report_step(run_id, report, timeout))

    async def list_steps(
        self,
        run_id: str,
        after: int | None = None,
        limit: int = 100,
        phase: Phase | str | None = None,
    ) -> Page[StepRead]:
        """One page of step history; pass `next_after` as `after` for the next."""
        return await self._send(_calls.list_steps(run_id, after, limit, phase))

    async def iter_steps(
        self, run_id: str, *, phase: Phase | str | None = None, page_size: int = 100
    ) -> AsyncIterator[StepRead]:
        """Every stored step report of the run, in step order, page after page."""
        after: int | None = None
        while True:
            page = await self.list_steps(run_id, after=after, limit=page_size, phase=phase)
            for item in page.items:
                yield item
            if page.next_after is None:
                return
            after = page.next_after

    async def list_samples(self, run_id: str, step: int) -> list[SampleRead]:
        """Per-sample rows of one step, with their flags."""
        return await self._send(_calls.list_samples(run_id, step))

    # ------------------------------------------------------------------ findings

    async def list_findings(
        self,
        run_id: str,
        *,
        severity: Severity | str | None = None,
        status: FindingStatus | str | None = None,
        after: int | None = None,
        limit: int = 200,
    ) -> list[Finding]:
        """Detector findings of the run, oldest first."""
        return await self._send(_calls.list_findings(run_id, severity, status, after, limit))

    async def ack_finding(self, finding_id: int, ack: FindingAck | None = None) -> Finding:
        """Acknowledge (or snooze, with `snooze_seconds`) a finding (operator); never retried."""
        return await self._send(_calls.ack_finding(finding_id, ack))

    # ------------------------------------------------------------------ commands

    async def list_commands(
        self,
        run_id: str,
        status: CommandStatus | str | Sequence[CommandStatus | str] | None = None,
        *,
        after: int | None = None,
        limit: int = 200,
    ) -> list[Command]:
        """Commands of the run, oldest first; `status` filters by one status or several."""
        return await self._send(_calls.list_commands(run_id, status, after, limit))

    async def ack_command(
        self, command_id: int, status: AckStatus | str, step: int, detail: str | None = None
    ) -> Command:
        """Report what the trainer did with a command. Retried: a repeat is a no-op."""
        return await self._send(_calls.ack_command(command_id, status, step, detail))

    async def issue_command(self, run_id: str, command: CommandCreate) -> Command:
        """Issue a command by hand (operator); never retried."""
        return await self._send(_calls.issue_command(run_id, command))

    async def approve_command(self, command_id: int, note: str | None = None) -> Command:
        """Approve a held command (operator); never retried."""
        return await self._send(_calls.decide_command(command_id, "approve", note))

    async def reject_command(self, command_id: int, note: str | None = None) -> Command:
        """Refuse a held command (operator); never retried."""
        return await self._send(_calls.decide_command(command_id, "reject", note))

    # ------------------------------------------------------------------ audit

    async def list_audit(
        self,
        *,
        target_type: str | None = None,
        target_id: str | int | None = None,
        after: int | None = None,
        limit: int = 200,
    ) -> list[AuditRead]:
        """Who did what, when (operator); oldest first."""
        return await self._send(_calls.list_audit(target_type, target_id, after, limit))

    # ------------------------------------------------------------------ health

    async def healthz(self) -> dict[str, Any]:
        """Liveness: the service answers."""
        return await self._send(_calls.healthz())

    async def readyz(self) -> bool:
        """Readiness: True when the service and its database answer, False on 503."""
        return await self._send(_calls.readyz())
