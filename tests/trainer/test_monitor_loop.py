"""The trainer talks to the real service over loopback: it registers, reports every rollout
and update once, applies the verdict's drops, and marks its run's end."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlkeel.client import Client

from .monitoring import LengthTask, attach, make_trainer, steps_in_service


@dataclass
class Service:
    url: str
    token: str
    trainer: Client
    operator: Client


@pytest.fixture
def service(live_server, tokens, one_torch_thread) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    with Client(live_server.url, token=tokens.trainer) as trainer, \
            Client(live_server.url, token=tokens.operator) as operator:  # fmt: skip
        yield Service(live_server.url, tokens.trainer, trainer, operator)


def test_run_is_registered_reported_once_per_phase_and_finished(service: Service, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, steps=3)
    link = attach(trainer, service.url, service.token, mode="observe")
    trainer.run()
    assert link.finish("finished") is True
    run = service.trainer.get_run(link.run_id)
    assert (run.status.value, run.automation.value, run.algorithm.value) == ("finished", "observe", "grpo")
    assert run.model.parameter_count == sum(p.numel() for p in trainer.model.parameters())
    assert "token" not in run.config and run.config["steps"] == 3
    assert steps_in_service(service.trainer, link.run_id) == [
        (s, p) for s in range(3) for p in ("rollout", "update")]
    samples = service.trainer.list_samples(link.run_id, 1)
    assert len(samples) == 8 and {s.group_id for s in samples} == {"s1-g0", "s1-g1"}
    update = next(s for s in service.trainer.iter_steps(link.run_id, phase="update") if s.step == 2)
    assert update.metrics["loss"] == pytest.approx(trainer.history[2]["loss"])
    assert update.metrics["service_verdict_local"] == 0.0  # every verdict came from the service
    assert link.local_verdicts == 0 and not link.spool.directory.exists()


def test_verdict_drops_leave_the_batch_and_every_normaliser(service: Service, tmp_path: Path) -> None:
    # The first prompt of each step scores NaN: the service's sample_nonfinite detector drops
    # its group; the kept groups' advantages are computed without it, so the update is finite.
    trainer = make_trainer(tmp_path, task=LengthTask(nan_prompt=True), steps=2, prompts_per_step=8,
                           group_size=2)  # fmt: skip
    link = attach(trainer, service.url, service.token)
    trainer.run()
    link.finish()
    for step, row in enumerate(trainer.history):
        assert row["dropped_frac"] == pytest.approx(2 / 16)
        assert row["optimizer_steps"] == 1 and math.isfinite(row["loss"]), row
        stored = service.trainer.list_samples(link.run_id, step)
        assert {s.sample_id for s in stored if s.dropped} == {f"s{step}-0", f"s{step}-1"}
    # Without the drop the NaN group poisons the loss and the whole update is skipped.
    local = make_trainer(tmp_path / "local", task=LengthTask(nan_prompt=True), steps=1,
                         prompts_per_step=8, group_size=2)  # fmt: skip
    local.run()
    assert local.history[0]["optimizer_steps"] == 0 and local.counters["nonfinite_skips"] == 1
