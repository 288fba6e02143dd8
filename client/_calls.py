"""The wire contract (DESIGN §3) as request specs: one function per endpoint.

Retry rule: a call is marked idempotent when sending it twice leaves the service as sending it
once: every GET, every PUT, a step report (idempotent on (run, step, phase) by contract) and a
command ack (a repeated identical ack is a no-op). Registering a run, issuing, approving or
rejecting a command and acknowledging a finding are never retried (PUTs record an audit entry
each time they reach the service; a lost answer may therefore leave two identical entries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlkeel.client._transport import (
    API_PREFIX,
    Call,
    Parser,
    encode,
    json_parser,
    model_parser,
    params_of,
    segment,
)
from rlkeel.client.schemas import (
    AckStatus,
    AuditRead,
    AutomationMode,
    AutomationUpdate,
    Command,
    CommandAck,
    CommandCreate,
    CommandDecision,
    CommandStatus,
    Finding,
    FindingAck,
    FindingStatus,
    Page,
    Phase,
    Run,
    RunCreate,
    RunStatus,
    RunStatusUpdate,
    SampleRead,
    Severity,
    StepRead,
    StepReport,
    Verdict,
)

_run: Parser[Run] = model_parser(Run)
_runs: Parser[list[Run]] = model_parser(list[Run])
_verdict: Parser[Verdict] = model_parser(Verdict)
_steps_page: Parser[Page[StepRead]] = model_parser(Page[StepRead])
_samples: Parser[list[SampleRead]] = model_parser(list[SampleRead])
_finding: Parser[Finding] = model_parser(Finding)
_findings: Parser[list[Finding]] = model_parser(list[Finding])
_command: Parser[Command] = model_parser(Command)
_commands: Parser[list[Command]] = model_parser(list[Command])
_audit: Parser[list[AuditRead]] = model_parser(list[AuditRead])


def _runs_path(run_id: str, tail: str = "") -> str:
    return f"{API_PREFIX}/runs/{segment(run_id)}{tail}"


def register_run(run: RunCreate | None, fields: Mapping[str, Any]) -> Call[Run]:
    if run is not None and fields:
        raise TypeError("register_run takes a RunCreate or keyword fields, not both")
    body = run if run is not None else RunCreate.model_validate(dict(fields))
    return Call("POST", f"{API_PREFIX}/runs", _run, body=encode(body))


def list_runs(
    project: str | None, status: RunStatus | str | None, limit: int, offset: int
) -> Call[list[Run]]:
    params = params_of(project=project, status=status, limit=limit, offset=offset or None)
    return Call("GET", f"{API_PREFIX}/runs", _runs, params=params, idempotent=True)


def get_run(run_id: str) -> Call[Run]:
    return Call("GET", _runs_path(run_id), _run, idempotent=True)


def report_step(
    run_id: str, report: StepReport | Mapping[str, Any], timeout: float | None = None
) -> Call[Verdict]:
    if not isinstance(report, StepReport):
        report = StepReport.model_validate(dict(report))
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return Call("POST", _runs_path(run_id, "/steps"), _verdict, body=encode(report),
                idempotent=True, timeout=timeout)  # fmt: skip


def list_steps(
    run_id: str, after: int | None, limit: int, phase: Phase | str | None
) -> Call[Page[StepRead]]:
    params = params_of(after=after, limit=limit, phase=phase)
    return Call("GET", _runs_path(run_id, "/steps"), _steps_page, params=params, idempotent=True)


def list_samples(run_id: str, step: int) -> Call[list[SampleRead]]:
    return Call("GET", _runs_path(run_id, "/samples"), _samples, params={"step": step},
                idempotent=True)  # fmt: skip


def list_findings(
    run_id: str,
    severity: Severity | str | None,
    status: FindingStatus | str | None,
    after: int | None,
    limit: int,
) -> Call[list[Finding]]:
    params = params_of(severity=severity, status=status, after=after, limit=limit)
    return Call("GET", _runs_path(run_id, "/findings"), _findings, params=params, idempotent=True)


def ack_finding(finding_id: int, ack: FindingAck | None) -> Call[Finding]:
    body = encode(ack if ack is not None else FindingAck())
    return Call("POST", f"{API_PREFIX}/findings/{segment(finding_id)}/ack", _finding, body=body)


def list_commands(
    run_id: str,
    status: CommandStatus | str | Sequence[CommandStatus | str] | None,
    after: int | None,
    limit: int,
) -> Call[list[Command]]:
    statuses = [status] if isinstance(status, str) else status
    params = params_of(status=list(statuses) if statuses else None, after=after, limit=limit)
    return Call("GET", _runs_path(run_id, "/commands"), _commands, params=params, idempotent=True)


def issue_command(run_id: str, command: CommandCreate) -> Call[Command]:
    return Call("POST", _runs_path(run_id, "/commands"), _command, body=encode(command))


def ack_command(
    command_id: int, status: AckStatus | str, step: int, detail: str | None
) -> Call[Command]:
    body = encode(CommandAck(status=AckStatus(status), step=step, detail=detail))
    return Call("POST", f"{API_PREFIX}/commands/{segment(command_id)}/ack", _command, body=body,
                idempotent=True)  # fmt: skip


def decide_command(command_id: int, decision: str, note: str | None) -> Call[Command]:
    """`approve` or `reject` a held command (runs in approval mode)."""
    path = f"{API_PREFIX}/commands/{segment(command_id)}/{decision}"
    return Call("POST", path, _command, body=encode(CommandDecision(note=note)))


def set_automation(run_id: str, mode: AutomationMode | str) -> Call[Run]:
    body = encode(AutomationUpdate(mode=AutomationMode(mode)))
    return Call("PUT", _runs_path(run_id, "/automation"), _run, body=body, idempotent=True)


def set_run_status(run_id: str, status: RunStatus | str, detail: str | None) -> Call[Run]:
    """Idempotent: setting the status a run already has is a no-op."""
    body = encode(RunStatusUpdate.model_validate({"status": getattr(status, "value", status),
                                                  "detail": detail}))  # fmt: skip
    return Call("PUT", _runs_path(run_id, "/status"), _run, body=body, idempotent=True)


def get_policy(run_id: str) -> Call[dict[str, Any]]:
    return Call("GET", _runs_path(run_id, "/policy"), json_parser, idempotent=True)


def put_policy(run_id: str, policy: Mapping[str, Any]) -> Call[dict[str, Any]]:
    return Call("PUT", _runs_path(run_id, "/policy"), json_parser, body=encode(policy),
                idempotent=True)  # fmt: skip


def list_audit(
    target_type: str | None, target_id: str | int | None, after: int | None, limit: int
) -> Call[list[AuditRead]]:
    target = None if target_id is None else str(target_id)
    params = params_of(target_type=target_type, target_id=target, after=after, limit=limit)
    return Call("GET", f"{API_PREFIX}/audit", _audit, params=params, idempotent=True)


def healthz() -> Call[dict[str, Any]]:
    return Call("GET", "/healthz", json_parser, idempotent=True)


def readyz() -> Call[bool]:
    # 503 is the answer "not ready", not an error; it is not retried either.
    return Call("GET", "/readyz", lambda r: r.status_code == 200, idempotent=True,
                ok_statuses=frozenset({503}))  # fmt: skip
