"""The training configuration: one flat dataclass, JSON-round-trippable for checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

POSITIVE_EMPHASIS_MODES = ("none", "sample_weight", "positive_tokens", "advantage_scale")
LR_SCHEDULES = ("constant", "cosine")
AUTOMATION_MODES = ("auto", "approve", "observe")
SECRET_FIELDS = ("token",)
INVOCATION_FIELDS = ("steps", "out_dir", "server_url", "token", "verdict_timeout_s", "spool_dir",
                     "spool_max_mb", "run_name", "mode")  # fmt: skip
"""Fields that belong to this invocation, not to the run: a checkpoint never overrides them."""


@dataclass
class TrainConfig:
    """Everything a run needs. ``None`` means "the algorithm's default" (ALGORITHMS.md)."""

    algorithm: str = "grpo"
    task: str = "addition"
    task_options: dict[str, Any] = field(default_factory=dict)
    model: str = "builtin-tiny"
    model_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 50
    seed: int = 0
    group_size: int = 8
    prompts_per_step: int = 8
    """Global prompts per step (split over DDP ranks)."""
    max_new_tokens: int = 8
    temperature: float = 1.0
    # optimisation
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    ppo_epochs: int = 1
    minibatches: int = 1
    grad_clip: float = 1.0
    # loss
    advantage_estimator: str | None = None
    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    use_reference: bool | None = None
    """Keep a frozen reference policy (default: when ``kl_coef > 0``)."""
    # DAPO (arXiv 2503.14476)
    dynamic_sampling: bool | None = None
    overlong_filter: bool | None = None
    overlong_buffer: int = 0
    """Soft overlong punishment buffer L_c in tokens (0 = off)."""
    # positive emphasis (design note §2.3)
    positive_emphasis: str = "none"
    positive_factor: float = 1.0
    # PPO critic
    gamma: float = 1.0
    lam: float = 0.95
    vf_clip: float = 0.2
    vf_coef: float = 0.5
    whiten_advantages: bool = True
    # warm start and I/O
    warm_start: bool = True
    warm_start_steps: int = 400
    """Supervised warm-up steps of the built-in model (cached on disk by the tasks package)."""
    checkpoint_every: int = 0
    keep_checkpoints: int = 0
    """Newest checkpoints kept (0 = all)."""
    out_dir: str | None = None
    device: str = "auto"
    # the service (rlkeel.trainer.monitor); no server_url = a local run
    server_url: str | None = None
    token: str | None = None
    """API key with the trainer role. A secret: never written to checkpoints nor sent."""
    verdict_timeout_s: float = 2.0
    """How long a rollout waits for the service's verdict before local guards decide."""
    spool_dir: str | None = None
    """Where reports wait while the service is away (default: OUT/spool or a temp dir)."""
    spool_max_mb: float = 256.0
    run_name: str | None = None
    mode: str = "auto"
    """Automation mode the run is registered with: auto, approve or observe."""
    guard_max_length: int | None = None
    """Local guard while the service is away: drop samples that hit this many tokens without
    ending (default: the current max_new_tokens)."""
    inject: list[str] = field(default_factory=list)
    """Fault injections ``KIND@STEP[:STRENGTH]`` (a testing tool: ``rlkeel.trainer.inject``)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.group_size < 1 or self.prompts_per_step < 1:
            raise ValueError("need steps >= 0, group_size >= 1, prompts_per_step >= 1")
        if self.ppo_epochs < 1 or self.minibatches < 1:
            raise ValueError("need ppo_epochs >= 1 and minibatches >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.positive_emphasis not in POSITIVE_EMPHASIS_MODES:
            raise ValueError(f"positive_emphasis must be one of {POSITIVE_EMPHASIS_MODES}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError("lr must be a finite number >= 0")
        if self.mode not in AUTOMATION_MODES:
            raise ValueError(f"mode must be one of {AUTOMATION_MODES}")
        if not (math.isfinite(self.verdict_timeout_s) and self.verdict_timeout_s > 0):
            raise ValueError("verdict_timeout_s must be a positive number")
        if not (self.spool_max_mb > 0):
            raise ValueError("spool_max_mb must be positive")
        if self.inject:
            from rlkeel.trainer.inject import parse_injection

            for spec in self.inject:
                parse_injection(spec)  # fails early, naming the valid kinds

    @property
    def is_dapo(self) -> bool:
        return self.algorithm == "dapo"

    @property
    def dynamic_sampling_on(self) -> bool:
        return self.is_dapo if self.dynamic_sampling is None else self.dynamic_sampling

    @property
    def overlong_filter_on(self) -> bool:
        return self.is_dapo if self.overlong_filter is None else self.overlong_filter

    @property
    def reference_on(self) -> bool:
        return self.kl_coef > 0 if self.use_reference is None else self.use_reference

    def to_dict(self) -> dict[str, Any]:
        """Everything but the secrets (this goes into checkpoints and the run's registration)."""
        return {k: v for k, v in asdict(self).items() if k not in SECRET_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return replace(self, **overrides)
