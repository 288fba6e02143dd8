"""The loop's data: hook reports, verdicts, commands, the update batch, the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.rollout import RolloutBatch


@dataclass
class LoopReport:
    """What the hooks see: the wire ``StepReport`` fields as plain python (``to_wire`` builds
    the pydantic object). ``samples`` is the whole global batch on rank 0 (empty elsewhere)."""

    step: int
    phase: str
    algorithm: str
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_wire(self) -> Any:
        from rlkeel.client.schemas import StepReport

        return StepReport(step=self.step, phase=self.phase, algorithm=self.algorithm,
                          metrics=self.metrics, samples=self.samples)  # fmt: skip


@dataclass
class RolloutVerdict:
    drop: list[str] = field(default_factory=list)
    skip_step: bool = False
    weights: dict[str, float] | None = None
    commands: list[Any] = field(default_factory=list)

    @classmethod
    def from_any(cls, obj: Any) -> RolloutVerdict:
        """Accepts None, a dict, this class, or the client's ``Verdict`` (drop entries may be
        ids or objects/dicts with ``sample_id``)."""
        if obj is None:
            return cls()
        if isinstance(obj, cls):
            return obj
        get = obj.get if isinstance(obj, dict) else lambda k, d=None: getattr(obj, k, d)
        drop = []
        for d in get("drop", None) or []:
            if isinstance(d, str):
                drop.append(d)
            elif isinstance(d, dict):
                drop.append(str(d["sample_id"]))
            else:
                drop.append(str(d.sample_id))
        return cls(drop=drop, skip_step=bool(get("skip_step", False)),
                   weights=get("weights", None), commands=list(get("commands", None) or []))  # fmt: skip


@dataclass
class PendingCommand:
    """A command to apply at a step boundary (``effective_step`` None = the next boundary)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    effective_step: int | None = None
    id: Any = None

    @classmethod
    def from_any(cls, obj: Any) -> PendingCommand:
        if isinstance(obj, cls):
            return obj
        get = obj.get if isinstance(obj, dict) else lambda k, d=None: getattr(obj, k, d)
        kind = get("kind")
        return cls(kind=str(getattr(kind, "value", kind)), params=dict(get("params", None) or {}),
                   effective_step=get("effective_step", None), id=get("id", None))  # fmt: skip


@dataclass
class UpdateBatch:
    """A rollout plus what the update needs, row-aligned; ``select`` keeps them together."""

    rollout: RolloutBatch
    rewards: Tensor  # [B]
    advantages: Tensor  # [B, T] per token (0 outside the response)
    weights: Tensor  # [B] per-sample loss multipliers
    returns: Tensor | None = None  # [B, T] PPO critic targets
    old_values: Tensor | None = None  # [B, T]
    token_weights: Tensor | None = None  # [B, T] positive_tokens emphasis

    @property
    def sample_ids(self) -> list[str]:
        return self.rollout.sample_ids

    def __len__(self) -> int:
        return len(self.rollout)

    def select(self, keep: Tensor | Sequence[bool] | Sequence[int]) -> UpdateBatch:
        keep_t = torch.as_tensor(keep)
        index = keep_t.nonzero().flatten() if keep_t.dtype == torch.bool else keep_t.long()
        index = index.to(self.rewards.device)
        changes: dict[str, Any] = {"rollout": self.rollout.select(index.cpu())}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.index_select(0, index)
        return replace(self, **changes)


RolloutHook = Callable[[LoopReport], Any]
UpdateHook = Callable[[LoopReport], Any]
CommandHook = Callable[[PendingCommand, str, str], None]


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then constant or cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
