"""The training loop's controls: each public method's effect on the trainer's state."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
import torch

from rlkeel.trainer import checkpoint as ckpt
from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.loop import LoopReport, Trainer, UpdateBatch, lr_multiplier
from rlkeel.trainer.models import CharTokenizer, build_model
from rlkeel.trainer.rollout import compute_rewards, generate
from rlkeel.trainer.tasks import Prompt, Task

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


class LengthTask(Task):
    """A fake task whose reward is the response length: a random policy gets rewards with
    spread in every group, so every step has a gradient (no warm start needed)."""

    name = "length"

    def sample(self, n: int, generator: random.Random) -> list[Prompt]:
        return [Prompt(f"{generator.randint(0, 99)}+1=", "", {}) for _ in range(n)]

    def reward(self, prompt: Prompt, response_text: str) -> float:
        return len(response_text) / 4.0

    @property
    def max_answer_length(self) -> int:
        return 4


def make_trainer(tmp_path: Any, **overrides: Any) -> Trainer:
    hooks = {k: overrides.pop(k) for k in ("on_rollout", "on_update", "on_command") if k in overrides}
    config = TrainConfig(task="addition", model_options=TINY, warm_start=False, steps=4,
                         group_size=4, prompts_per_step=2, max_new_tokens=4, lr=1e-2,
                         out_dir=str(tmp_path), device="cpu", **overrides)  # fmt: skip
    torch.manual_seed(config.seed)
    model = build_model("builtin-tiny", CharTokenizer(), **TINY)
    return Trainer(config, model=model, task=LengthTask(), **hooks)


def rollout_batch(trainer: Trainer) -> UpdateBatch:
    prompts = trainer.task.sample(trainer.config.prompts_per_step, trainer.prompt_rng)
    batch = generate(trainer.model, trainer.tokenizer, prompts, group_size=trainer.config.group_size,
                     max_new_tokens=trainer.max_new_tokens, generator=trainer.generator)  # fmt: skip
    return trainer._advantages(batch, compute_rewards(trainer.task, batch))


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_train_step_reports_canonical_metrics(tmp_path: Any) -> None:
    seen: list[LoopReport] = []
    trainer = make_trainer(tmp_path, on_rollout=seen.append, on_update=seen.append)
    metrics = trainer.train_step()
    for name in ("reward_mean", "entropy_mean", "length_mean", "loss", "policy_loss", "grad_norm",
                 "clip_frac", "clip_frac_low", "clip_frac_high", "ppo_kl", "log_ratio_abs_max",
                 "lr", "step_time_s", "tokens_per_s", "dropped_frac"):  # fmt: skip
        assert name in metrics, name
    assert [r.phase for r in seen] == ["rollout", "update"]
    assert len(seen[0].samples) == 8 and seen[0].samples[0]["sample_id"] == "s0-0"
    assert seen[0].to_wire().samples[3].group_id == "s0-g0"
    assert trainer.step == 1


def test_switch_algorithm_keeps_optimizer_state_and_changes_loss(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path, algorithm="grpo", clip_eps_high=0.3)
    trainer.train_step()
    optimizer = trainer.optimizer
    first = next(iter(trainer.model.parameters()))
    moments = {k: v.clone() for k, v in optimizer.state[first].items()}
    trainer.switch_algorithm("gspo")
    assert trainer.optimizer is optimizer
    assert all(torch.equal(optimizer.state[first][k], v) for k, v in moments.items())
    assert trainer.algorithm == "gspo" and trainer.loss_overrides == {}  # GSPO's own clip range
    assert trainer.spec.clip_eps_low == pytest.approx(3e-4)
    trainer.switch_algorithm("dapo", {"clip_eps_high": 0.5, "advantage_estimator": "rloo"})
    assert trainer.loss_overrides == {"clip_eps_high": 0.5} and trainer.estimator == "rloo"
    metrics = trainer.train_step()
    assert trainer.history[-1] is metrics and optimizer.state[first]["step"] == 2
    with pytest.raises(ValueError, match="valid"):
        trainer.switch_algorithm("nope")


def test_dropped_samples_leave_every_normaliser(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path, algorithm="dapo", dynamic_sampling=False)
    ub = rollout_batch(trainer)
    dropped = ub.sample_ids[:4]  # the whole first group
    kept = trainer.drop_samples(ub, dropped)
    assert len(kept) == 4 and not set(dropped) & set(kept.sample_ids)
    loss_kept, _ = trainer._minibatch_loss(kept)
    # The same rows masked out (all-zero response mask) also leave every normaliser...
    masked = replace(ub, rollout=replace(ub.rollout, response_mask=ub.rollout.response_mask.clone()))
    masked.rollout.response_mask[:4] = 0
    loss_masked, _ = trainer._minibatch_loss(masked)
    torch.testing.assert_close(loss_kept, loss_masked)
    # ...while zeroing only their advantages keeps them in the token count: a different loss.
    zeroed = replace(ub, advantages=ub.advantages.clone())
    zeroed.advantages[:4] = 0
    loss_zeroed, _ = trainer._minibatch_loss(zeroed)
    assert not torch.allclose(loss_kept, loss_zeroed)


def test_verdict_drops_and_skips(tmp_path: Any) -> None:
    verdicts = iter([{"drop": ["s0-0", "s0-1"]}, {"skip_step": True}])
    trainer = make_trainer(tmp_path, on_rollout=lambda report: next(verdicts))
    assert trainer.train_step()["dropped_frac"] == pytest.approx(2 / 8)
    before = params(trainer)
    metrics = trainer.train_step()
    assert metrics["step_skipped"] == 1.0 and same(before, params(trainer))


def test_scale_lr_and_schedule(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path)
    assert trainer.scale_lr(0.5) == pytest.approx(5e-3)
    trainer.train_step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    with pytest.raises(ValueError):
        trainer.scale_lr(0.0)
    cosine = TrainConfig(steps=10, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [round(lr_multiplier(s, cosine), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.1]


def test_set_max_length_caps_responses(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path)
    trainer.set_max_length(2)
    metrics = trainer.train_step()
    assert metrics["length_max"] <= 2 and metrics["max_new_tokens"] == 2


def test_nonfinite_loss_skips_update_and_keeps_weights(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path)
    ub = rollout_batch(trainer)
    ub.advantages[0, -1] = float("nan")
    ub.advantages[:, :] = torch.where(ub.rollout.response_mask.bool(), float("nan"), 0.0)
    before = params(trainer)
    metrics = trainer.update(ub)
    assert same(before, params(trainer))
    assert metrics["optimizer_steps"] == 0 and trainer.counters["nonfinite_skips"] == 1
    assert not trainer.optimizer.state  # Adam's moments were never touched


def test_commands_apply_at_step_boundary(tmp_path: Any) -> None:
    acks: list[tuple[str, str]] = []
    answers = iter([[{"kind": "scale_lr", "params": {"factor": 0.1}},
                     {"kind": "set_max_length", "params": {"tokens": 0}},
                     {"kind": "switch_algorithm", "params": {"to": "gspo"}}], None, None])  # fmt: skip
    trainer = make_trainer(tmp_path, on_update=lambda report: next(answers),
                           on_command=lambda cmd, status, detail: acks.append((cmd.kind, status)))  # fmt: skip
    trainer.train_step()
    assert acks == [("scale_lr", "applied"), ("set_max_length", "rejected"),
                    ("switch_algorithm", "applied")]  # fmt: skip
    assert trainer.lr_scale == pytest.approx(0.1) and trainer.algorithm == "gspo"
    trainer.queue_commands([{"kind": "stop", "params": {"reason": "unstable"}, "effective_step": 2}])
    trainer.run()
    assert trainer.stop_reason == "unstable" and trainer.step == 2
    assert ckpt.list_checkpoints(trainer.checkpoint_dir)[-1][0] == 2  # final checkpoint


def test_rollback_restores_params_step_and_prompt_stream(tmp_path: Any) -> None:
    trainer = make_trainer(tmp_path, checkpoint_every=1)
    rows = [trainer.train_step() for _ in range(3)]
    saved = ckpt.load_checkpoint(ckpt.checkpoint_path(trainer.checkpoint_dir, 1))
    assert trainer.rollback(1) == 1 and trainer.step == 1
    for name, p in trainer.model.state_dict().items():
        assert torch.equal(p, saved["model"][name]), name
    replay = trainer.train_step()  # same prompts, same samples, same update as the first time
    for key in ("reward_mean", "length_mean", "loss", "grad_norm"):
        assert replay[key] == pytest.approx(rows[1][key], rel=1e-5), key
    assert ckpt.latest_at_or_before(trainer.checkpoint_dir, 0) is None
    with pytest.raises(ValueError):
        trainer.rollback(0)


@pytest.mark.parametrize("algorithm", ["ppo", "dapo"])
def test_ppo_critic_and_dapo_options(tmp_path: Any, algorithm: str) -> None:
    trainer = make_trainer(tmp_path, algorithm=algorithm, overlong_buffer=2, ppo_epochs=2,
                           minibatches=2, kl_coef=0.01, positive_emphasis="sample_weight",
                           positive_factor=2.0)  # fmt: skip
    metrics = trainer.train_step()
    assert metrics["optimizer_steps"] + metrics["step_skipped"] >= 1
    assert "kl_mean" in metrics  # a reference policy is kept when kl_coef > 0
    if algorithm == "ppo":
        assert metrics["value_loss"] > 0 and "explained_variance" in metrics
    else:
        assert "dynamic_sampling_dropped_frac" in metrics and "overlong_filtered_frac" in metrics
