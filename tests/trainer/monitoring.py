"""Helpers for the closed-loop tests: a trainer wired to the real service over loopback."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from rlkeel.client import Client, CommandCreate
from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.loop import Trainer
from rlkeel.trainer.models import CharTokenizer, build_model
from rlkeel.trainer.monitor import ServiceLink
from rlkeel.trainer.tasks import Prompt, Task

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


class LengthTask(Task):
    """Reward = response length / 4: a random policy has reward spread in every group.
    With ``nan_prompt`` the first prompt of every step scores NaN (a broken reward function)."""

    name = "length"

    def __init__(self, nan_prompt: bool = False) -> None:
        self.nan_prompt = nan_prompt

    def sample(self, n: int, generator: random.Random) -> list[Prompt]:
        return [Prompt(f"{generator.randint(0, 99)}+1=", "", {"nan": self.nan_prompt and i == 0})
                for i in range(n)]  # fmt: skip

    def reward(self, prompt: Prompt, response_text: str) -> float:
        return math.nan if prompt.meta.get("nan") else len(response_text) / 4.0

    @property
    def max_answer_length(self) -> int:
        return 4


def make_trainer(tmp_path: Path, *, task: Task | None = None, **overrides: Any) -> Trainer:
    fields: dict[str, Any] = dict(task="addition", model_options=TINY, warm_start=False, steps=4,
                                  group_size=4, prompts_per_step=2, max_new_tokens=4, lr=1e-2,
                                  out_dir=str(tmp_path / "out"), device="cpu")  # fmt: skip
    fields.update(overrides)
    config = TrainConfig(**fields)
    torch.manual_seed(config.seed)
    model = build_model("builtin-tiny", CharTokenizer(), **TINY)
    return Trainer(config, model=model, task=task or LengthTask())


def attach(trainer: Trainer, url: str, token: str, *, mode: str = "auto",
           verdict_timeout_s: float = 20.0, **kwargs: Any) -> ServiceLink:  # fmt: skip
    """A link with a generous verdict timeout: these tests are about behaviour, and the
    machine they run on may be loaded."""
    link = ServiceLink(url, token, verdict_timeout_s=verdict_timeout_s,
                       spool_dir=Path(trainer.config.out_dir or ".") / "spool", **kwargs)  # fmt: skip
    run_id = link.attach(trainer, name="monitored", mode=mode)
    assert run_id is not None
    return link


def issue(operator: Client, run_id: str, kind: str, params: dict[str, Any],
          effective_step: int | None = None) -> int:  # fmt: skip
    command = operator.issue_command(run_id, CommandCreate.model_validate(
        {"kind": kind, "params": params, "reason": "test", "effective_step": effective_step}))  # fmt: skip
    return command.id


def steps_in_service(client: Client, run_id: str) -> list[tuple[int, str]]:
    return [(s.step, s.phase.value) for s in client.iter_steps(run_id)]
