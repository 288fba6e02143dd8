"""Every command kind of DESIGN §3, issued by an operator through the real service, applied by
the trainer at a step boundary and acknowledged: each test checks the effect on the trainer's
state, not only the ack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlkeel.client import Client, CommandStatus
from rlkeel.trainer import checkpoint as ckpt
from rlkeel.trainer.loop import Trainer
from rlkeel.trainer.monitor import ServiceLink

from .monitoring import attach, issue, make_trainer, steps_in_service
from .test_monitor_loop import Service


@pytest.fixture
def service(live_server, tokens, one_torch_thread) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    with Client(live_server.url, token=tokens.trainer) as trainer, \
            Client(live_server.url, token=tokens.operator) as operator:  # fmt: skip
        yield Service(live_server.url, tokens.trainer, trainer, operator)


def run_with_command(service: Service, tmp_path: Path, kind: str, params: dict,  # type: ignore[type-arg]
                     *, at: int = 1, steps: int = 4, **overrides: object) -> tuple[Trainer, ServiceLink, int]:  # fmt: skip
    """A run whose command goes out in the verdict of step ``at``: the trainer applies it at
    the boundary after step ``at``, so it is in force from step ``at + 1``."""
    trainer = make_trainer(tmp_path, steps=steps, **overrides)
    link = attach(trainer, service.url, service.token)
    command_id = issue(service.operator, link.run_id, kind, params, effective_step=at)
    trainer.run()
    link.finish("stopped" if trainer.stop_reason else "finished", trainer.stop_reason)
    return trainer, link, command_id


def ack_of(service: Service, run_id: str, command_id: int) -> tuple[str, int | None, str | None]:
    command = next(c for c in service.operator.list_commands(run_id) if c.id == command_id)
    return command.status.value, command.applied_step, command.detail


def test_skip_step(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(service, tmp_path, "skip_step", {})
    assert [row["step_skipped"] for row in trainer.history] == [0.0, 0.0, 1.0, 0.0]
    assert [row["optimizer_steps"] for row in trainer.history] == [1.0, 1.0, 0.0, 1.0]
    assert ack_of(service, link.run_id, cid)[:2] == ("applied", 2)


def test_switch_algorithm_keeps_the_optimizer_and_updates_the_service(service: Service, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, steps=4)
    optimizer = trainer.optimizer
    link = attach(trainer, service.url, service.token)
    cid = issue(service.operator, link.run_id, "switch_algorithm",
                {"to": "gspo", "overrides": {"clip_eps_high": 5e-4}}, effective_step=1)  # fmt: skip
    trainer.run()
    link.finish()
    assert trainer.algorithm == "gspo" and trainer.loss_overrides == {"clip_eps_high": 5e-4}
    assert trainer.optimizer is optimizer
    first = next(iter(trainer.model.parameters()))
    assert int(optimizer.state[first]["step"]) == 4  # Adam's moments went on across the switch
    algorithms = {(s.step, s.phase.value): s.algorithm.value for s in service.trainer.iter_steps(link.run_id)}
    assert [algorithms[(s, "rollout")] for s in range(4)] == ["grpo", "grpo", "gspo", "gspo"]
    assert service.trainer.get_run(link.run_id).current_algorithm.value == "gspo"
    assert ack_of(service, link.run_id, cid)[:2] == ("applied", 2)


def test_positive_emphasis(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(
        service, tmp_path, "positive_emphasis", {"mode": "advantage_scale", "factor": 3.0})  # fmt: skip
    assert trainer.positive_emphasis == ("advantage_scale", 3.0)
    # Positive advantages are now scaled by 3 before the loss.
    from .test_loop import rollout_batch

    ub = rollout_batch(trainer)
    trainer.set_positive_emphasis("none")
    plain = rollout_batch_with_same_draws(trainer, ub)
    pos = plain > 0
    torch.testing.assert_close(ub.advantages[pos], 3.0 * plain[pos])
    torch.testing.assert_close(ub.advantages[~pos], plain[~pos])
    assert ack_of(service, link.run_id, cid)[0] == "applied"


def rollout_batch_with_same_draws(trainer: Trainer, ub) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return trainer._advantages(ub.rollout, ub.rewards).advantages


def test_scale_lr(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(service, tmp_path, "scale_lr", {"factor": 0.25})
    assert [row["lr"] for row in trainer.history] == pytest.approx([1e-2, 1e-2, 2.5e-3, 2.5e-3])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    status, step, detail = ack_of(service, link.run_id, cid)
    assert (status, step) == ("applied", 2) and "0.0025" in (detail or "")


def test_set_max_length(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(service, tmp_path, "set_max_length", {"tokens": 2},
                                          max_new_tokens=6)  # fmt: skip
    assert [row["max_new_tokens"] for row in trainer.history] == [6, 6, 2, 2]
    assert all(row["length_max"] <= 2 for row in trainer.history[2:])
    assert ack_of(service, link.run_id, cid)[0] == "applied"


def test_rollback_restores_weights_and_keeps_counting(service: Service, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, steps=5, checkpoint_every=1)
    link = attach(trainer, service.url, service.token)
    cid = issue(service.operator, link.run_id, "rollback", {"to_step": 1}, effective_step=2)
    restored: dict[str, torch.Tensor] = {}
    prompts_before = trainer.prompt_rng.getstate()

    def spy(cmd, status, detail):  # type: ignore[no-untyped-def]
        if cmd.kind == "rollback":  # the state right after the rollback was applied
            restored.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            restored["__step__"] = torch.tensor(trainer.step)
        link.on_command(cmd, status, detail)

    trainer.on_command = spy
    trainer.run()
    link.finish()
    saved = ckpt.load_checkpoint(ckpt.checkpoint_path(trainer.checkpoint_dir, 1))
    for name, value in saved["model"].items():
        assert torch.equal(restored[name], value), name
    assert int(restored["__step__"]) == 3  # applied after step 2; the counter went on
    assert trainer.step == 5 and len(trainer.history) == 5
    # The service holds every step exactly once (steps are never reused)...
    assert steps_in_service(service.trainer, link.run_id) == [
        (s, p) for s in range(5) for p in ("rollout", "update")]
    # ...and the prompt stream went on too: 5 steps drew 5 fresh sets of prompts.
    import random

    rng = random.Random()
    rng.setstate(prompts_before)
    for _ in range(5):
        trainer.task.sample(trainer.config.prompts_per_step, rng)
    assert rng.getstate() == trainer.prompt_rng.getstate()
    status, step, detail = ack_of(service, link.run_id, cid)
    assert (status, step) == ("applied", 3) and "step 1 restored" in (detail or "")


def test_rollback_without_a_checkpoint_is_rejected_with_a_reason(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(service, tmp_path, "rollback", {"to_step": 0}, steps=3)
    assert trainer.step == 3 and len(trainer.history) == 3
    status, step, detail = ack_of(service, link.run_id, cid)
    assert (status, step) == ("rejected", 2) and "no checkpoint" in (detail or "")


def test_stop_exits_cleanly_with_a_final_checkpoint(service: Service, tmp_path: Path) -> None:
    trainer, link, cid = run_with_command(service, tmp_path, "stop", {"reason": "enough"}, steps=6)
    assert trainer.stop_reason == "enough" and trainer.step == 2
    assert [s for s, _ in ckpt.list_checkpoints(trainer.checkpoint_dir)] == [2]
    run = service.trainer.get_run(link.run_id)
    assert run.status.value == "stopped" and run.last_step == 1
    assert ack_of(service, link.run_id, cid)[:2] == ("applied", 2)
    assert not service.operator.list_commands(link.run_id, CommandStatus.delivered)


def test_a_command_that_breaks_is_acknowledged_failed_and_training_goes_on(service: Service, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, steps=4)
    link = attach(trainer, service.url, service.token)
    trainer.checkpoint_dir.mkdir(parents=True)  # type: ignore[union-attr]
    ckpt.checkpoint_path(trainer.checkpoint_dir, 0).write_bytes(b"not a checkpoint")  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    cid = issue(service.operator, link.run_id, "rollback", {"to_step": 0}, effective_step=1)
    trainer.run()
    link.finish()
    status, step, detail = ack_of(service, link.run_id, cid)
    assert (status, step) == ("failed", 2) and detail
    assert trainer.step == 4 and any(not torch.equal(v, before[k])
                                     for k, v in trainer.model.state_dict().items())  # fmt: skip
