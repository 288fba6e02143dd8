"""Distributed training on CPU (gloo): two ranks give the same update as one process on the
same global batch, and ``torchrun -m rlkeel.trainer`` runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.loop import Trainer, UpdateBatch
from rlkeel.trainer.models import CharTokenizer, build_model
from rlkeel.trainer.rollout import compute_rewards, generate

from .test_loop import TINY, LengthTask

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trainer(algorithm: str) -> Trainer:
    config = TrainConfig(algorithm=algorithm, model_options=TINY, warm_start=False, group_size=4,
                         prompts_per_step=4, max_new_tokens=5, lr=1e-2, ppo_epochs=2,
                         device="cpu")  # fmt: skip
    torch.manual_seed(0)
    model = build_model("builtin-tiny", CharTokenizer(), **TINY)
    trainer = Trainer(config, model=model, task=LengthTask())
    # Plain SGD: the update is then linear in the gradient, so rank-summed gradients can be
    # compared tightly. (Adam's g/sqrt(v) turns float noise on near-zero gradients into
    # lr-sized sign flips.)
    trainer.optimizer = torch.optim.SGD(
        [p for g in trainer.optimizer.param_groups for p in g["params"]], lr=0.1)  # fmt: skip
    return trainer


def _global_batch(trainer: Trainer) -> UpdateBatch:
    prompts = trainer.task.sample(4, trainer.prompt_rng)
    batch = generate(trainer.model, trainer.tokenizer, prompts, group_size=4, max_new_tokens=5,
                     generator=torch.Generator().manual_seed(3))  # fmt: skip
    return trainer._advantages(batch, compute_rewards(trainer.task, batch))


ALGORITHMS = ("dapo", "grpo")  # token_mean and seq_mean_token_mean normalisers


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    states = {}
    for algorithm in ALGORITHMS:
        trainer = _trainer(algorithm)  # the first one joins the gloo group
        ub = _global_batch(trainer)
        # Each rank gets whole groups (rows 8r..8r+7), of different response lengths.
        trainer.update(ub.select(torch.arange(8 * rank, 8 * rank + 8)))
        states[algorithm] = trainer.model.state_dict()
    if rank == 0:
        torch.save(states, out)
    torch.distributed.destroy_process_group()


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(_free_port(), out), nprocs=WORLD, join=True)
    distributed = torch.load(out, weights_only=True)
    for algorithm in ALGORITHMS:
        single = _trainer(algorithm)
        before = {k: v.clone() for k, v in single.model.state_dict().items()}
        single.update(_global_batch(single))
        for name, value in single.model.state_dict().items():
            assert not torch.equal(value, before[name]) or "embed" not in name
            torch.testing.assert_close(distributed[algorithm][name], value, rtol=1e-4, atol=1e-6,
                                       msg=f"{algorithm} {name}")  # fmt: skip


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")  # fmt: skip
def test_torchrun_two_processes(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "rlkeel.trainer", "--algorithm", "grpo", "--task", "addition", "--steps", "2",
           "--no-warm-start", "--model-options", json.dumps(TINY), "--group-size", "2",
           "--prompts-per-step", "4", "--max-new-tokens", "3", "--checkpoint-every", "1",
           "--out", str(tmp_path), "--no-progress", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000001.pt", "step-000002.pt"]  # fmt: skip

