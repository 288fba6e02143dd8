"""The real client against the real app: register, report, read back."""

from __future__ import annotations

import math

from rlkeel.client import (
    AckStatus,
    AsyncClient,
    Client,
    Command,
    CommandStatus,
    Finding,
    Phase,
    Run,
    SampleRead,
    StepRead,
    Verdict,
)
from rlkeel.server.commands import service as command_service

from .conftest import rollout, run_create, sample, update


def issue_command_directly(app, run_id: str, kind: str = "scale_lr") -> int:  # type: ignore[no-untyped-def]
    """A pending command written by the service layer: the route to issue one comes later."""
    with app.state.session_factory.begin() as session:
        command = command_service.issue(
            session, run_id=run_id, kind=kind, params={"factor": 0.5},
            reason={"text": "test", "finding_ids": []}, origin="operator", held=False,
            effective_step=None, actor="test",
        )  # fmt: skip
        return int(command.id)


def test_register_report_and_read_back_over_loopback(client: Client) -> None:
    run = client.register_run(run_create("loopback"))
    assert isinstance(run, Run) and run.name == "loopback" and run.last_step is None

    verdict = client.report_step(run.id, rollout(0))
    assert isinstance(verdict, Verdict)
    assert verdict.step == 0 and verdict.phase is Phase.rollout
    assert client.report_step(run.id, update(0)).phase is Phase.update

    page = client.list_steps(run.id)
    assert [(s.step, s.phase) for s in page.items] == [(0, Phase.rollout), (0, Phase.update)]
    assert page.next_after is None
    metrics = page.items[0].metrics
    assert math.isnan(metrics["loss"])
    assert metrics["grad_norm"] == math.inf and metrics["custom_low"] == -math.inf
    assert metrics["reward_mean"] == 0.5

    samples = client.list_samples(run.id, step=0)
    assert all(isinstance(s, SampleRead) for s in samples)
    assert [s.sample_id for s in samples] == [f"s{i}" for i in range(8)]
    assert samples[3].length == 13 and samples[3].kl == 0.01

    assert client.get_run(run.id).last_step == 0
    assert [r.id for r in client.list_runs(project="client-tests")] == [run.id]
    assert client.list_runs(project="nobody") == []
    assert client.healthz() == {"status": "ok"}
    assert client.readyz() is True


def test_non_finite_sample_values_travel_and_come_back(client: Client) -> None:
    run = client.register_run(name="nan-samples", algorithm="grpo", model={"name": "m"})
    report = rollout(0, n=4)
    report.samples.append(sample(4, reward=math.nan, advantage=-math.inf, kl=math.inf))
    client.report_step(run.id, report)
    stored = {s.sample_id: s for s in client.list_samples(run.id, 0)}
    assert stored["s4"].reward is not None and math.isnan(stored["s4"].reward)
    assert stored["s4"].advantage == -math.inf and stored["s4"].kl == math.inf


def test_re_report_returns_the_stored_verdict_and_stores_nothing_twice(client: Client) -> None:
    run = client.register_run(run_create())
    first = client.report_step(run.id, rollout(1))
    again = client.report_step(run.id, rollout(1))
    assert again == first
    assert len(client.list_steps(run.id).items) == 1
    assert len(client.list_samples(run.id, 1)) == 8


def test_a_plain_dict_report_is_validated_and_sent(client: Client) -> None:
    run = client.register_run(run_create())
    verdict = client.report_step(run.id, {
        "step": 2, "phase": "update", "algorithm": "grpo", "metrics": {"loss": float("nan")},
    })  # fmt: skip
    assert verdict.step == 2
    assert math.isnan(client.list_steps(run.id).items[0].metrics["loss"])


def test_iter_steps_follows_next_after(client: Client) -> None:
    run = client.register_run(run_create())
    for step in range(5):
        client.report_step(run.id, rollout(step, n=2))
        client.report_step(run.id, update(step))
    page = client.list_steps(run.id, limit=2)
    assert {s.step for s in page.items} == {0, 1} and page.next_after == 1
    steps = list(client.iter_steps(run.id, page_size=2))
    assert all(isinstance(s, StepRead) for s in steps)
    assert [(s.step, s.phase.value) for s in steps] == [
        (step, phase) for step in range(5) for phase in ("rollout", "update")
    ]
    assert [s.step for s in client.iter_steps(run.id, phase="update", page_size=3)] == [
        0, 1, 2, 3, 4]  # fmt: skip
    assert [s.step for s in client.list_steps(run.id, after=3).items] == [4, 4]


def test_commands_are_delivered_listed_and_acknowledged(app, client: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    command_id = issue_command_directly(app, run.id)
    assert [c.status for c in client.list_commands(run.id)] == [CommandStatus.pending]

    verdict = client.report_step(run.id, rollout(0))
    assert [c.id for c in verdict.commands] == [command_id]
    assert isinstance(verdict.commands[0], Command)
    assert client.list_commands(run.id, "pending") == []
    delivered = client.list_commands(run.id, [CommandStatus.delivered, CommandStatus.held])
    assert [c.id for c in delivered] == [command_id]

    acked = client.ack_command(command_id, AckStatus.applied, step=0, detail="lr halved")
    assert acked.status is CommandStatus.applied and acked.applied_step == 0
    assert acked.detail == "lr halved"
    # A repeated identical ack (what a retry sends) is a no-op.
    assert client.ack_command(command_id, "applied", step=0).status is CommandStatus.applied


def seed_findings(app, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """Two findings written by the storage layer (what the detectors write, without them)."""
    from rlkeel.server.db.models import FindingRecord

    with app.state.session_factory.begin() as session:
        session.add_all([
            FindingRecord(run_id=run_id, step=0, phase="update", detector="non_finite_loss",
                          severity="critical", metric="loss", value=None, baseline=0.1,
                          threshold=None, nonfinite={"value": "NaN"}, message="loss is NaN"),
            FindingRecord(run_id=run_id, step=1, phase="rollout", detector="long_response",
                          severity="warning", metric="length", value=900.0, baseline=50.0,
                          threshold=500.0, message="one response is long", sample_ids=["s3"]),
        ])  # fmt: skip


def test_findings_are_listed_as_schema_objects(app, client: Client) -> None:  # type: ignore[no-untyped-def]
    run = client.register_run(run_create())
    assert client.list_findings(run.id) == []
    seed_findings(app, run.id)
    findings = client.list_findings(run.id)
    assert all(isinstance(f, Finding) and f.run_id == run.id for f in findings)
    assert [f.detector for f in findings] == ["non_finite_loss", "long_response"]
    assert findings[0].value is not None and math.isnan(findings[0].value)
    assert findings[1].sample_ids == ["s3"] and findings[1].threshold == 500.0
    critical = client.list_findings(run.id, severity="critical", status="open")
    assert [f.id for f in critical] == [findings[0].id]
    assert [f.id for f in client.list_findings(run.id, after=findings[0].id)] == [findings[1].id]


async def test_async_client_in_process(app, aclient: AsyncClient) -> None:  # type: ignore[no-untyped-def]
    run = await aclient.register_run(run_create("async"))
    verdict = await aclient.report_step(run.id, rollout(0))
    assert verdict.step == 0 and verdict.drop == []
    assert await aclient.report_step(run.id, rollout(0)) == verdict
    await aclient.report_step(run.id, update(0))
    assert (await aclient.get_run(run.id)).name == "async"
    assert [r.id for r in await aclient.list_runs(status="running")] == [run.id]
    steps = [s async for s in aclient.iter_steps(run.id, page_size=1)]
    assert [(s.step, s.phase.value) for s in steps] == [(0, "rollout"), (0, "update")]
    assert math.isnan(steps[0].metrics["loss"])
    assert len(await aclient.list_samples(run.id, 0)) == 8
    seed_findings(app, run.id)
    assert len(await aclient.list_findings(run.id, limit=1)) == 1

    command_id = issue_command_directly(app, run.id)
    assert [c.id for c in await aclient.list_commands(run.id, "pending")] == [command_id]
    acked = await aclient.ack_command(command_id, "rejected", step=1, detail="not now")
    assert acked.status is CommandStatus.rejected
    assert await aclient.healthz() == {"status": "ok"}
    assert await aclient.readyz() is True


def test_non_finite_numbers_inside_extra_round_trip(client: Client) -> None:
    # pydantic's JSON mode used to turn these into null before they left the client.
    run = client.register_run(name="nan-extra", algorithm="grpo", model={"name": "m"})
    report = rollout(0, n=2)
    report.samples[0].extra = {"logp": -math.inf, "parts": {"fmt": math.nan}, "ok": 1.5}
    client.report_step(run.id, report)
    extra = {s.sample_id: s.extra for s in client.list_samples(run.id, 0)}["s0"]
    # As the service stores what any client sends as bare NaN/Infinity: their labels.
    assert extra == {"logp": "-Infinity", "parts": {"fmt": "NaN"}, "ok": 1.5}


def test_trainer_marks_the_run_finished(client: Client) -> None:
    run = client.register_run(run_create("ends", automation="observe"))
    assert run.automation == "observe"
    assert client.set_run_status(run.id, "stopped", "stop command").status == "stopped"
    assert client.set_run_status(run.id, "stopped").status == "stopped"  # a retry is a no-op
    assert client.get_run(run.id).status == "stopped"


def test_report_step_takes_a_per_call_timeout(client: Client) -> None:
    import pytest

    from rlkeel.client import RequestTimeoutError

    run = client.register_run(run_create("deadline"))
    with pytest.raises(RequestTimeoutError):
        client.report_step(run.id, rollout(0), timeout=1e-6)  # the client's own is 5 s
    with pytest.raises(ValueError, match="timeout"):
        client.report_step(run.id, rollout(0), timeout=0)
    assert client.report_step(run.id, rollout(0), timeout=30).step == 0
