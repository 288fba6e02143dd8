"""Local guards (no verdict in time) and how the loop applies a verdict's drops."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from rlkeel.trainer import algos
from rlkeel.trainer.loop import UpdateBatch
from rlkeel.trainer.monitor import guard_reasons, local_verdict

from .monitoring import make_trainer


def sample(i: int, **overrides: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"sample_id": f"s{i}", "group_id": "g", "reward": 1.0, "advantage": 0.5,
                         "length": 3, "truncated": False, "kl": None, "log_ratio_max": None,
                         "entropy": 1.0}  # fmt: skip
    s.update(overrides)
    return s


def test_guards_drop_non_finite_and_runaway_samples() -> None:
    assert guard_reasons(sample(0), length_cap=8) == []
    assert guard_reasons(sample(0, reward=math.nan, kl=math.inf), 8) == [
        "guard_nonfinite_reward", "guard_nonfinite_kl"]
    assert guard_reasons(sample(0, length=8, truncated=True), 8) == ["guard_length_cap"]
    assert guard_reasons(sample(0, length=8, truncated=False), 8) == []  # it ended in time
    assert guard_reasons(sample(0, length=9, truncated=True), 8) == ["guard_length_cap"]
    batch = [sample(0), sample(1, advantage=-math.inf), sample(2, length=8, truncated=True),
             sample(3), sample(4), sample(5)]  # fmt: skip
    verdict = local_verdict(batch, length_cap=8)
    assert verdict.drop == ["s1", "s2"] and not verdict.skip_step


def test_guards_skip_the_step_past_half_the_batch() -> None:
    batch = [sample(i, reward=math.nan if i < 3 else 1.0) for i in range(5)]
    verdict = local_verdict(batch, length_cap=8)
    assert verdict.skip_step and verdict.drop == []
    assert local_verdict([], length_cap=8).skip_step is False


def test_dropped_samples_leave_the_group_advantage_normaliser(tmp_path: Path) -> None:
    # Drop one sample of the first group: the kept samples' advantages are the group-normalised
    # ones of the kept rewards alone, not the full group's with a row removed.
    trainer = make_trainer(tmp_path, steps=1, prompts_per_step=2, group_size=4,
                           max_new_tokens=6)  # fmt: skip
    reports: list[Any] = []
    trainer.on_rollout = lambda report: (reports.append(report), {"drop": ["s0-0"]})[1]
    seen: list[UpdateBatch] = []
    update = trainer.update
    trainer.update = lambda ub: (seen.append(ub), update(ub))[1]  # type: ignore[method-assign]
    trainer.run()
    ub = seen[0]
    assert ub.sample_ids == [f"s0-{i}" for i in range(1, 8)]
    expected = algos.compute_advantages("grpo", ub.rewards, ub.rollout.group_index)
    got = ub.advantages.sum(1) / ub.rollout.response_mask.sum(1).clamp(min=1)
    torch.testing.assert_close(got, expected)
    assert trainer.history[0]["dropped_frac"] == 1 / 8
    # What a plain row selection would have kept: the full group's normalisation.
    rewards = torch.tensor([s["reward"] for s in reports[0].samples])
    groups = torch.tensor([0] * 4 + [1] * 4)
    full = algos.compute_advantages("grpo", rewards, groups)
    torch.testing.assert_close(expected[3:], full[4:])  # the other group is untouched
    assert len(set(rewards[:4].tolist())) > 1  # (seed 0: the group has spread)
    assert not torch.allclose(expected[:3], full[1:4])  # the dropped sample left its group
