"""Fault injection — a **testing tool** for demos, benchmarks and tests; never for real runs.

``rlkeel train --inject KIND@STEP[:STRENGTH]`` (repeatable; ``TrainConfig.inject``) breaks a
run on purpose at STEP, so the service has something to detect and to fix:

| kind | from STEP on | strength (default) |
|---|---|---|
| ``length_explosion`` | a buggy verifier rewards repetition as success: a response longer than any answer scores ``max(task reward, 2·strength·min(1, repetition/0.5))`` (repetition = share of repeated character 3-grams) — a loop earns more than a correct answer, so looping to the length cap pays | 3.0 |
| ``kl_spike`` | stale rollouts: for ``KL_SPIKE_STEPS`` steps the responses come from a stale copy of the policy (the weights at STEP plus Gaussian noise of ``strength`` × each tensor's std); the old log-probs are the stale policy's, so KL, log-ratios and the clip fraction jump | 0.2 |
| ``lr_blowup`` | the learning rate is multiplied by ``strength`` (on top of the schedule and any ``scale_lr``) | 30 |
| ``sparse_rewards`` | a correct response is rewarded only with probability 1/``strength`` | 8 |

Faults live on the run's wall clock — the number of steps executed — not on its step counter:
a rollback does not undo them (the world does not rewind). ``kl_spike`` lasts a fixed number of
executed steps; the others stay on. Everything is seeded by the run's seed.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlkeel.trainer.rollout_stats import repetition_share
from rlkeel.trainer.tasks import Prompt, Task

if TYPE_CHECKING:
    from rlkeel.trainer.loop import Trainer

__all__ = ["DEFAULT_STRENGTH", "KL_SPIKE_STEPS", "Injection", "Injector", "parse_injection"]

DEFAULT_STRENGTH = {
    "length_explosion": 3.0,
    "kl_spike": 0.2,
    "lr_blowup": 30.0,
    "sparse_rewards": 8.0,
}
KL_SPIKE_STEPS = 8
"""Executed steps the stale-rollout fault lasts."""


@dataclass(frozen=True)
class Injection:
    kind: str
    step: int
    strength: float

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}:{self.strength:g}"


def parse_injection(text: str) -> Injection:
    """``KIND@STEP[:STRENGTH]`` → ``Injection``; unknown kinds fail listing the valid ones."""
    kind, at, rest = text.strip().partition("@")
    if not at or not rest:
        raise ValueError(f"injection {text!r}: expected KIND@STEP[:STRENGTH], e.g. kl_spike@20")
    if kind not in DEFAULT_STRENGTH:
        raise ValueError(f"injection {text!r}: unknown kind {kind!r}; valid: "
                         f"{', '.join(sorted(DEFAULT_STRENGTH))}")  # fmt: skip
    step_text, colon, strength_text = rest.partition(":")
    try:
        step = int(step_text)
        strength = float(strength_text) if colon else DEFAULT_STRENGTH[kind]
    except ValueError:
        raise ValueError(f"injection {text!r}: STEP must be an integer and STRENGTH a number") from None
    if step < 0 or not strength > 0 or strength != strength or strength == float("inf"):
        raise ValueError(f"injection {text!r}: need STEP >= 0 and a finite STRENGTH > 0")
    if kind == "sparse_rewards" and strength < 1:
        raise ValueError(f"injection {text!r}: sparse_rewards STRENGTH is 1/probability, >= 1")
    return Injection(kind, step, strength)


class FaultyTask(Task):
    """The run's task behind the injected reward faults (same prompts, same answers)."""

    def __init__(self, task: Task, injector: Injector) -> None:
        self.inner, self.injector = task, injector
        self.name = task.name

    def sample(self, n: int, generator: random.Random) -> list[Prompt]:
        return self.inner.sample(n, generator)

    def reward(self, prompt: Prompt, response_text: str) -> float:
        return self.injector.reward(self.inner, prompt, response_text)

    @property
    def max_answer_length(self) -> int:
        return self.inner.max_answer_length

    def config(self) -> dict[str, Any]:
        return self.inner.config()


class Injector:
    """Applies the injections to one trainer. ``install`` wraps its task; the trainer calls
    ``before_step`` at the start of every step and generates with the model it returns."""

    def __init__(self, injections: list[Injection], seed: int = 0) -> None:
        self.injections = list(injections)
        self.clock: int | None = None
        """Steps executed so far, counted from the step the run started at (never rewinds)."""
        self.reward_rng = random.Random(seed * 7_919 + 0xFA17)
        self.noise = torch.Generator().manual_seed(seed * 104_729 + 0x57A1E)
        self.stale_model: nn.Module | None = None
        self.stale_since: int | None = None

    @classmethod
    def from_specs(cls, specs: list[str], seed: int = 0) -> Injector:
        return cls([parse_injection(s) for s in specs], seed)

    def install(self, trainer: Trainer) -> None:
        if not isinstance(trainer.task, FaultyTask):
            trainer.task = FaultyTask(trainer.task, self)

    # ------------------------------------------------------------------ what is on
    def strength(self, kind: str) -> float | None:
        """Strength of ``kind`` if it is on now (the strongest of several), else None."""
        if self.clock is None:
            return None
        on = [i.strength for i in self.injections if i.kind == kind and self._active(i)]
        return max(on) if on else None

    def _active(self, i: Injection) -> bool:
        assert self.clock is not None
        if i.kind == "kl_spike":
            return i.step <= self.clock < i.step + KL_SPIKE_STEPS
        return self.clock >= i.step

    def active_kinds(self) -> list[str]:
        return sorted({i.kind for i in self.injections if self.clock is not None and self._active(i)})

    # ------------------------------------------------------------------ the hooks
    def before_step(self, trainer: Trainer) -> nn.Module:
        """Advance the clock, apply the lr fault, and return the model to sample with."""
        self.clock = trainer.step if self.clock is None else self.clock + 1
        if (factor := self.strength("lr_blowup")) is not None:
            lr = trainer._set_lr() * factor  # schedule × scale_lr × the fault
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
        noise = self.strength("kl_spike")
        if noise is None:
            self.stale_model, self.stale_since = None, None
            return trainer.model
        if self.stale_model is None:
            self.stale_model = _perturbed_copy(trainer.model, noise, self.noise)
            self.stale_since = self.clock
        return self.stale_model

    def reward(self, task: Task, prompt: Prompt, text: str) -> float:
        r = task.reward(prompt, text)
        if (every := self.strength("sparse_rewards")) is not None and r > 0:
            r = r if self.reward_rng.random() < 1.0 / every else 0.0
        if (k := self.strength("length_explosion")) is not None:
            response = text.strip()
            if len(response) > task.max_answer_length:
                r = max(r, k * 2.0 * min(1.0, repetition_share(response) / 0.5))
        return r


@torch.no_grad()
def _perturbed_copy(model: nn.Module, relative_std: float, generator: torch.Generator) -> nn.Module:
    """A frozen copy of ``model`` with N(0, (relative_std · std(w))²) added to each tensor."""
    stale = copy.deepcopy(model).eval().requires_grad_(False)
    for p in stale.parameters():
        if p.numel() < 2:
            continue
        noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        p.add_(noise * relative_std * p.float().std().to(p.dtype))
    return stale
