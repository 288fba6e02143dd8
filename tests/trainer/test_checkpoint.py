"""Checkpoints: atomic files, lookup by step, and resume that continues identically."""

from __future__ import annotations

from pathlib import Path

import torch

from rlkeel.trainer import checkpoint as ckpt
from rlkeel.trainer.loop import Trainer

from .test_loop import make_trainer


def test_files_lookup_and_pruning(tmp_path: Path) -> None:
    for step in (1, 3, 5):
        ckpt.save_checkpoint(tmp_path, step, {"x": torch.tensor(step)})
    (tmp_path / ".step-000007.pt.123.tmp").write_bytes(b"half a file")  # a crashed write
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 3, 5]
    found = ckpt.latest_at_or_before(tmp_path, 4)
    assert found is not None and found[0] == 3
    assert int(ckpt.load_checkpoint(found[1])["x"]) == 3
    assert ckpt.latest_at_or_before(tmp_path, 0) is None
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 5]
    assert ckpt.list_checkpoints(tmp_path / "missing") == []


def test_resume_continues_identically(tmp_path: Path) -> None:
    straight = make_trainer(tmp_path / "a", checkpoint_every=2, algorithm="grpo",
                            lr_schedule="cosine",
                            warmup_steps=1)  # fmt: skip
    straight.scale_lr(0.5)
    rows = [straight.train_step() for _ in range(4)]

    resumed: Trainer = make_trainer(tmp_path / "b", algorithm="dapo")  # config comes from the file
    resumed.load_checkpoint(ckpt.checkpoint_path(straight.checkpoint_dir, 2))
    assert resumed.step == 2 and resumed.algorithm == "grpo" and resumed.lr_scale == 0.5
    again = [resumed.train_step() for _ in range(2)]
    for a, b in zip(rows[2:], again, strict=True):
        for key in ("reward_mean", "length_mean", "loss", "grad_norm", "lr"):
            assert a[key] == b[key], key
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(p, q), name
