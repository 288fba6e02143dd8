"""Fault injection (a testing tool): each kind's effect on rewards, the lr or the rollouts."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkeel.cli.main import main
from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.inject import (
    DEFAULT_STRENGTH,
    KL_SPIKE_STEPS,
    Injection,
    Injector,
    parse_injection,
)
from rlkeel.trainer.loop import Trainer
from rlkeel.trainer.models import CharTokenizer, build_model
from rlkeel.trainer.progress import read_metrics
from rlkeel.trainer.tasks import get_task

from .test_loop import TINY, LengthTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(tmp_path: Any, inject: list[str], **overrides: Any) -> Trainer:
    config = TrainConfig(task="sort", model_options=TINY, warm_start=False, steps=20,
                         group_size=4, prompts_per_step=2, max_new_tokens=6, lr=1e-3,
                         out_dir=str(tmp_path), device="cpu", inject=inject, **overrides)  # fmt: skip
    torch.manual_seed(0)
    return Trainer(config, model=build_model("builtin-tiny", CharTokenizer(), **TINY),
                   task=LengthTask())  # a reward with spread in every group, no warm start


def test_parse_names_the_valid_kinds_and_defaults_the_strength() -> None:
    assert parse_injection("kl_spike@20") == Injection("kl_spike", 20, DEFAULT_STRENGTH["kl_spike"])
    assert parse_injection("lr_blowup@3:10") == Injection("lr_blowup", 3, 10.0)
    with pytest.raises(ValueError, match="length_explosion, lr_blowup, sparse_rewards"):
        parse_injection("nan_bomb@3")
    for bad in ("kl_spike", "kl_spike@", "kl_spike@x", "kl_spike@-1", "lr_blowup@2:0",
                "lr_blowup@2:nan", "sparse_rewards@1:0.5"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_injection(bad)
    with pytest.raises(ValueError, match="unknown kind"):
        TrainConfig(inject=["bogus@1"])


def test_length_explosion_rewards_loops_from_its_step_on() -> None:
    task = get_task("sort", min_len=3, max_len=4)
    injector = Injector([parse_injection("length_explosion@5:1")])
    prompt = task.sample(1, random.Random(0))[0]
    loop, right = "abababababab", prompt.answer

    injector.clock = 4
    assert injector.reward(task, prompt, loop) == 0.0
    assert injector.reward(task, prompt, right) == 1.0
    injector.clock = 5
    assert injector.reward(task, prompt, loop) == 2.0  # a loop now beats a right answer
    assert injector.reward(task, prompt, right) == 1.0
    assert injector.reward(task, prompt, "abcdefghij") == 0.0  # long but no loop
    assert 0 < injector.reward(task, prompt, "abcdefabc") < 2.0  # a partial loop, partly paid


def test_sparse_rewards_keep_about_one_success_in_strength() -> None:
    task = get_task("sort")
    injector = Injector([parse_injection("sparse_rewards@2:4")], seed=3)
    prompt = task.sample(1, random.Random(0))[0]
    injector.clock = 1
    assert all(injector.reward(task, prompt, prompt.answer) == 1.0 for _ in range(50))
    injector.clock = 2
    kept = sum(injector.reward(task, prompt, prompt.answer) for _ in range(4000)) / 4000
    assert 0.2 < kept < 0.3
    assert injector.reward(task, prompt, "zz") == 0.0  # wrong stays wrong


def test_lr_blowup_multiplies_the_lr_and_survives_scale_lr_and_rollback(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, ["lr_blowup@2:10"], checkpoint_every=1)
    lrs = [trainer.train_step()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-2])
    trainer.scale_lr(0.5)
    assert trainer.train_step()["lr"] == pytest.approx(5e-3)  # the service's cut applies on top
    trainer.rollback(1)  # restores lr_scale 1.0 and step 1, but the fault stays on
    assert trainer.step == 1 and trainer.lr_scale == 1.0
    assert trainer.train_step()["lr"] == pytest.approx(1e-2)


def test_kl_spike_samples_from_a_stale_noisy_policy_for_a_while(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, ["kl_spike@1:0.5"], use_reference=True)
    first = trainer.train_step()
    assert first["log_ratio_abs_max"] == 0.0  # on-policy: ratio exactly 1
    spiked = trainer.train_step()
    stale = trainer.injector.stale_model
    assert stale is not None and stale is not trainer.model
    assert any(not torch.equal(a, b) for a, b in zip(stale.parameters(),
                                                      trainer.model.parameters(), strict=True))  # fmt: skip
    assert spiked["log_ratio_abs_max"] > 0.05  # the update sees off-policy samples
    assert spiked["kl_mean"] > 10 * max(first["kl_mean"], 1e-4)  # far from the reference
    for _ in range(KL_SPIKE_STEPS):
        last = trainer.train_step()
    assert trainer.injector.stale_model is None  # over: samples come from the policy again
    assert last["log_ratio_abs_max"] == 0.0


def test_rlkeel_train_accepts_inject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--task", "sort", "--steps", "3", "--group-size", "2",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--no-warm-start",
                 "--model-options", json.dumps(TINY), "--out", str(tmp_path), "--device", "cpu",
                 "--no-progress", "--lr", "1e-3", "--inject", "lr_blowup@1:4",
                 "--inject", "sparse_rewards@2"])  # fmt: skip
    assert code == 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 4e-3, 4e-3])
    capsys.readouterr()
