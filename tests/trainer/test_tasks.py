"""Tasks: rewards by hand, seeded determinism, the supervised warm start."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rlkeel.trainer.tasks import (
    Prompt,
    evaluate_success,
    get_task,
    task_names,
    warm_start_policy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_names_on_error() -> None:
    assert {"addition", "reverse", "sort"} <= set(task_names())
    with pytest.raises(ValueError, match="addition, reverse, sort"):
        get_task("division")


def test_addition_reward_by_hand() -> None:
    task = get_task("addition", digits=3)
    p = Prompt("12+345=", "357")
    assert task.reward(p, "357") == 1.0
    assert task.reward(p, " 357 ") == 1.0
    assert task.reward(p, "358") == 0.0 and task.reward(p, "") == 0.0
    partial = get_task("addition", digits=3, partial_credit=0.5)
    assert partial.reward(p, "358") == pytest.approx(0.5 * 2 / 3)
    assert partial.reward(p, "357") == 1.0 and partial.reward(p, "x") == 0.0


def test_string_task_rewards_by_hand() -> None:
    rev, srt = get_task("reverse"), get_task("sort")
    assert rev.reward(Prompt("rev abc=", "cba"), "cba") == 1.0
    assert rev.reward(Prompt("rev abc=", "cba"), "abc") == 0.0
    assert srt.sample(1, random.Random(1))[0].answer == "".join(
        sorted(srt.sample(1, random.Random(1))[0].meta["word"]))  # fmt: skip


@pytest.mark.parametrize("name", ["addition", "reverse", "sort"])
def test_seeded_determinism_and_answers(name: str) -> None:
    task = get_task(name)
    a, b = task.sample(20, random.Random(7)), task.sample(20, random.Random(7))
    assert a == b and a != task.sample(20, random.Random(8))
    for p in a:
        assert task.reward(p, p.answer) == 1.0
        assert p.text.endswith("=")
    if name == "addition":
        assert all(int(p.answer) == p.meta["a"] + p.meta["b"] for p in a)


def test_warm_start_raises_success_and_caches(tmp_path: Path) -> None:
    kwargs = {"task_kwargs": {"digits": 1}, "steps": 120, "batch_size": 32, "lr": 3e-3,
              "device": "cpu", "cache_dir": tmp_path}  # fmt: skip
    cold = warm_start_policy("addition", 0, **{**kwargs, "steps": 0, "use_cache": False})
    before = evaluate_success(cold.model, cold.tokenizer, cold.task, n=100)
    warm = warm_start_policy("addition", 0, **kwargs)
    after = evaluate_success(warm.model, warm.tokenizer, warm.task, n=100)
    assert warm.info["from_cache"] is False
    assert warm.info["loss_last"] < warm.info["loss_first"]
    assert before < 0.1 and after >= 0.3, (before, after)
    again = warm_start_policy("addition", 0, **kwargs)
    assert again.info["from_cache"] is True
    for k, v in warm.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])
