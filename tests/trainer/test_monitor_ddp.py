"""Distributed closed loop (gloo, two ranks): rank 0 talks to the service and broadcasts the
verdict and the commands, so both ranks drop the same samples, switch to GSPO at the same step
and stay identical."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rlkeel.client import Client
from rlkeel.trainer import distributed as dist

from .monitoring import LengthTask, attach, issue, make_trainer, steps_in_service
from .test_ddp import _free_port

WORLD, STEPS = 2, 4


def _rank_main(rank: int, port: int, url: str, trainer_token: str, operator_token: str,
               out: str) -> None:  # fmt: skip
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    # The first prompt of each step (rank 0's share) scores NaN: the service drops its group.
    trainer = make_trainer(Path(out), task=LengthTask(nan_prompt=True), steps=STEPS,
                           prompts_per_step=8, group_size=2)  # fmt: skip
    assert trainer.world == WORLD
    link = None
    run_id = None
    if rank == 0:
        link = attach(trainer, url, trainer_token)
        run_id = link.run_id
        with Client(url, token=operator_token) as operator:
            issue(operator, run_id, "switch_algorithm", {"to": "gspo"}, effective_step=1)
    run_id = dist.broadcast_object(run_id)
    algorithms = []
    for _ in range(STEPS):
        algorithms.append(trainer.algorithm)
        trainer.train_step()
    if link is not None:
        link.finish()
    torch.save({"algorithms": algorithms, "state": trainer.model.state_dict(),
                "optimizer_steps": [r["optimizer_steps"] for r in trainer.history],
                "dropped_frac": [r["dropped_frac"] for r in trainer.history],
                "run_id": run_id}, Path(out) / f"rank{rank}.pt")  # fmt: skip
    dist.shutdown()


def test_both_ranks_switch_at_the_same_step_and_stay_identical(live_server, tokens, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mp.spawn(_rank_main, nprocs=WORLD, join=True,
             args=(_free_port(), live_server.url, tokens.trainer, tokens.operator, str(tmp_path)))  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert r["algorithms"] == ["grpo", "grpo", "gspo", "gspo"]
        assert r["optimizer_steps"] == [1.0] * STEPS  # every step updated the weights
        assert r["dropped_frac"] == [2 / 16] * STEPS  # the NaN group, gone on both ranks
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    run_id = ranks[0]["run_id"]
    with Client(live_server.url, token=tokens.operator) as client:
        run = client.get_run(run_id)
        assert run.world_size == 2 and run.current_algorithm.value == "gspo"
        assert run.status.value == "finished"
        # One report per step and phase, from rank 0 only, with the whole global batch.
        assert steps_in_service(client, run_id) == [
            (s, p) for s in range(STEPS) for p in ("rollout", "update")]
        samples = client.list_samples(run_id, 0)
        assert len(samples) == 16 and {s.sample_id for s in samples if s.dropped} == {"s0-0", "s0-1"}
        (command,) = client.list_commands(run_id)
        assert (command.status.value, command.applied_step) == ("applied", 2)
