"""Operator overrides through the client: commands by hand, approvals, automation, policy,
finding acks and the audit log, against the real app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlkeel.client import (
    AsyncClient,
    AutomationMode,
    Client,
    CommandCreate,
    CommandOrigin,
    CommandStatus,
    ConflictError,
    FindingAck,
    FindingStatus,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from rlkeel.server.commands import service as command_service

from .conftest import FAST, rollout, run_create
from .test_flow import seed_findings


@pytest.fixture
def operator(live_server, tokens) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    with Client(live_server.url, token=tokens.operator, **FAST) as c:  # type: ignore[arg-type]
        yield c


def held_command(app, run_id: str) -> int:  # type: ignore[no-untyped-def]
    """A policy command held for approval (what approval mode makes of the policy's output)."""
    with app.state.session_factory.begin() as session:
        command = command_service.issue(
            session, run_id=run_id, kind="skip_step", params={},
            reason={"text": "held", "finding_ids": []}, origin="policy", held=True,
            effective_step=None, actor="policy",
        )  # fmt: skip
        return int(command.id)


def test_issue_approve_reject_and_deliver(app, client: Client, operator: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    issued = operator.issue_command(
        run.id, CommandCreate(kind="scale_lr", params={"factor": 0.5}, reason="lr too high")
    )
    assert issued.origin is CommandOrigin.operator and issued.status is CommandStatus.pending
    with pytest.raises(PermissionDeniedError):
        client.issue_command(run.id, CommandCreate(kind="stop", params={"reason": "x"}))

    first, second = held_command(app, run.id), held_command(app, run.id)
    assert operator.approve_command(first, note="fine").status is CommandStatus.approved
    assert operator.reject_command(second).status is CommandStatus.refused

    verdict = client.report_step(run.id, rollout(0))
    assert sorted(c.id for c in verdict.commands) == sorted([issued.id, first])


def test_bad_command_params_name_the_field(client: Client, operator: Client) -> None:
    run = client.register_run(run_create())
    with pytest.raises(UnprocessableEntityError) as caught:
        operator.issue_command(run.id, CommandCreate(kind="scale_lr", params={"factor": -1}))
    assert caught.value.fields and caught.value.fields[0].startswith("params")
    assert operator.list_commands(run.id) == []


def test_automation_policy_finding_ack_and_audit(app, client: Client, operator: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    assert operator.set_automation(run.id, "approve").automation is AutomationMode.approve
    assert client.get_run(run.id).automation is AutomationMode.approve

    policy = operator.get_policy(run.id)
    assert isinstance(policy, dict) and "max_drop_frac" in policy
    policy["max_drop_frac"] = 0.1
    assert operator.put_policy(run.id, policy)["max_drop_frac"] == 0.1
    assert operator.get_policy(run.id)["max_drop_frac"] == 0.1
    with pytest.raises(UnprocessableEntityError) as caught:
        operator.put_policy(run.id, {"max_drop_frac": 2.0})
    assert caught.value.fields == ["max_drop_frac"]

    seed_findings(app, run.id)
    findings = operator.list_findings(run.id)
    acked = operator.ack_finding(findings[0].id)
    assert acked.status is FindingStatus.acknowledged
    snoozed = operator.ack_finding(findings[1].id, FindingAck(snooze_seconds=60, note="known"))
    assert snoozed.status is FindingStatus.snoozed and snoozed.snoozed_until is not None

    actions = [e.action for e in operator.list_audit(target_type="run", target_id=run.id)]
    assert actions == ["run.automation", "policy.replace"]
    assert len(operator.list_audit(target_type="finding")) == 2


async def test_async_operator_calls(app, tokens) -> None:  # type: ignore[no-untyped-def]
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with (
        AsyncClient("http://t", token=tokens.trainer, transport=transport) as trainer,
        AsyncClient("http://t", token=tokens.operator, transport=transport) as op,
    ):
        run = await trainer.register_run(run_create())
        assert (await op.set_automation(run.id, AutomationMode.observe)).automation == "observe"
        command = await op.issue_command(run.id, CommandCreate(kind="stop",
                                                               params={"reason": "enough"}))
        held = held_command(app, run.id)
        assert (await op.reject_command(held, note="no")).status is CommandStatus.refused
        with pytest.raises(ConflictError) as caught:  # only a held command can be approved
            await op.approve_command(command.id)
        assert caught.value.fields == ["status"] and caught.value.attempts == 1
