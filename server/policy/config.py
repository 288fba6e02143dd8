"""Per-run policy configuration: detector thresholds and the bounds on automatic actions.

Operators read and replace it through `GET/PUT /v1/runs/{run}/policy`; a partial body is
merged over the defaults (`DEFAULT_POLICY`), unknown names fail listing the valid ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlkeel.client.schemas import Algorithm, CommandKind, Severity
from rlkeel.server.detectors.catalog import DETECTORS, DetectorSpec

__all__ = ["DEFAULT_POLICY", "DetectorSettings", "PolicyConfig", "default_detector_settings"]

_SPECS: dict[str, DetectorSpec] = {d.name: d for d in DETECTORS}
TOKEN_LEVEL = (Algorithm.grpo, Algorithm.dapo, Algorithm.ppo, Algorithm.dr_grpo, Algorithm.cispo)


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DetectorSettings(_Cfg):
    enabled: bool = True
    """Off: the detector neither fires nor flags samples."""
    threshold: float
    """Fire past this value (above or below, by the detector's direction)."""
    rearm: float
    """Hysteresis: after firing, fire again only once the statistic went back past this."""
    warmup: int = Field(ge=0, le=1_000_000)
    """Observations before the detector may fire."""
    cooldown: int = Field(ge=0, le=1_000_000)
    """Steps of silence after it fired."""
    severity: Severity
    """Severity of its findings."""
    params: dict[str, float] = Field(default_factory=dict)
    """Detector-specific knobs (see the README table)."""


def default_detector_settings(name: str) -> DetectorSettings:
    s = _SPECS[name]
    return DetectorSettings(threshold=s.threshold, rearm=s.rearm, warmup=s.warmup,
                            cooldown=s.cooldown, severity=s.severity, params=dict(s.params))  # fmt: skip


def _default_cooldowns() -> dict[CommandKind, int]:
    return {
        CommandKind.skip_step: 0,
        CommandKind.switch_algorithm: 50,
        CommandKind.positive_emphasis: 200,
        CommandKind.scale_lr: 100,
        CommandKind.rollback: 20,
        CommandKind.set_max_length: 100,
        CommandKind.stop: 0,
    }


class PolicyConfig(_Cfg):
    detectors: dict[str, DetectorSettings] = Field(default_factory=dict)
    """Per-detector settings; missing detectors and fields take their defaults."""
    max_drop_frac: float = Field(default=0.25, ge=0.0, le=1.0)
    """Never drop more than this share of a batch; past it, skip the step instead."""
    keep_negative_outliers: bool = True
    """Flagged samples with advantage ≤ 0 are kept, not dropped (their gradient pushes the
    anomaly down; under token-level losses they are weighted to the median length)."""
    cooldowns: dict[CommandKind, int] = Field(default_factory=_default_cooldowns)
    """Steps (update reports) between two policy commands of one kind."""
    switch_window: int = Field(default=500, ge=1)
    """At most one algorithm switch per this many steps."""
    instability_detectors: list[str] = Field(
        default_factory=lambda: ["kl_spike", "clip_frac_spike", "log_ratio_spike",
                                 "clip_frac_range"])  # fmt: skip
    """Findings that count as token-level instability."""
    instability_count: int = Field(default=3, ge=1, le=1000)
    """Switch to GSPO after this many instability findings ..."""
    instability_window: int = Field(default=50, ge=1, le=100_000)
    """... within this many steps."""
    switch_target: Literal[Algorithm.gspo] = Algorithm.gspo
    """Where sustained token-level instability switches to."""
    moe_start_on_gspo: bool = True
    """MoE runs on a token-level algorithm get switch_algorithm → gspo at their first report."""
    positive_emphasis_mode: Literal["sample_weight", "positive_tokens", "advantage_scale"] = (
        "advantage_scale"
    )
    """How positive samples are emphasised when the positive fraction stays under 10%."""
    positive_emphasis_factor: float = Field(default=2.0, gt=1.0, le=100.0)
    """Emphasis factor k."""
    lr_spike_count: int = Field(default=2, ge=1, le=1000)
    """scale_lr after this many grad-norm spikes ..."""
    lr_spike_window: int = Field(default=50, ge=1, le=100_000)
    """... within this many steps."""
    lr_factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Learning-rate multiplier of scale_lr."""
    rollback_detectors: list[str] = Field(
        default_factory=lambda: ["nonfinite_step", "entropy_floor"])
    """Findings that trigger a rollback to the last healthy step."""
    max_rollbacks: int = Field(default=1, ge=0, le=100)
    """Rollbacks allowed; trouble after that many (within stop_window) stops the run."""
    stop_window: int = Field(default=500, ge=1)
    """Steps after a rollback during which new trouble stops the run."""
    collapse_ratio: float = Field(default=0.6, gt=0.0, lt=1.0)
    """Reward collapse: the mean reward_mean of the last `collapse_sustain` updates below this
    share of its healthy baseline ..."""
    collapse_sustain: int = Field(default=3, ge=1, le=1000)
    """... (that many updates) ..."""
    collapse_warmup: int = Field(default=10, ge=1, le=100_000)
    """... once the baseline has seen this many healthy steps ..."""
    collapse_evidence: list[str] = Field(
        default_factory=lambda: ["kl_spike", "grad_norm_spike", "log_ratio_spike",
                                 "clip_frac_spike", "clip_frac_range", "entropy_slide",
                                 "entropy_floor", "nonfinite_step"])  # fmt: skip
    """... and one of these findings, or KL to the reference above `collapse_kl_factor` × its
    healthy level, before the fall or as it starts (the policy itself moved first: a reward
    that falls before any such sign — e.g. rewards turned sparse — is not a collapse). A
    collapse rolls back like `rollback_detectors` do."""
    stale_detectors: list[str] = Field(
        default_factory=lambda: ["log_ratio_spike", "clip_frac_spike"])
    """Findings that say the samples were not the policy's own (stale rollouts): a reward that
    falls with them is the data's fault, not a collapse to roll back."""
    collapse_kl_factor: float = Field(default=4.0, gt=1.0, le=1e6)
    """KL to the reference this many times its healthy EWMA counts as the policy moving ..."""
    collapse_kl_min: float = Field(default=0.05, ge=0.0)
    """... when it is also above this."""
    rollback_grace: int = Field(default=5, ge=1, le=10_000)
    """Update reports after a rollback on which nothing is judged (no new rollback or stop, no
    healthy step): the trainer applies the rollback at a later step boundary, and until then
    its reports still come from the broken weights."""
    collapse_lr_factor: float = Field(default=0.1, gt=0.0, le=1.0)
    """A reward collapse also scales the learning rate by this (1 = leave it): a policy that
    moved this far in a few steps took steps too large, and the same lr would redo it."""
    rollback_margin: int = Field(default=5, ge=0, le=1000)
    """A collapse is seen late: roll back to a healthy step at least this many steps before
    the reward first fell."""
    length_detectors: list[str] = Field(
        default_factory=lambda: ["length_growth", "truncation_rate"])
    """Findings of a length explosion: they cap the response length (set_max_length)."""
    max_length_factor: float = Field(default=2.0, gt=1.0, le=100.0)
    """set_max_length caps responses at this multiple of the healthy mean length ..."""
    min_max_length: int = Field(default=8, ge=1, le=1_000_000)
    """... and never below this many tokens."""
    positive_emphasis_warmup: int = Field(default=20, ge=0, le=100_000)
    """low_positive_frac findings before this many update reports are ignored: a run that
    starts with few successes is not yet one whose successes became rare."""
    ppo_critic_switch: bool = True
    """PPO runs with verifiable rewards switch to GRPO when the critic stays unhealthy."""
    healthy_max_severity: Severity = Severity.info
    """A step whose findings are all at most this severe counts as healthy (rollback target)."""

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        given = data.get("detectors") or {}
        if not isinstance(given, dict):
            return data  # let field validation report the type error
        unknown = sorted(set(given) - set(_SPECS))
        if unknown:
            raise ValueError(f"detectors: unknown detector(s) {unknown}; valid: {sorted(_SPECS)}")
        merged: dict[str, Any] = {}
        for name in _SPECS:
            base = default_detector_settings(name).model_dump()
            over = given.get(name)
            if isinstance(over, DetectorSettings):
                over = over.model_dump()
            if over is None:
                merged[name] = base
            elif isinstance(over, dict):
                params = dict(base["params"])
                params.update(over.get("params") or {})
                merged[name] = {**base, **over, "params": params}
            else:
                merged[name] = over
        data["detectors"] = merged
        if isinstance(data.get("cooldowns"), dict):
            data["cooldowns"] = {**_default_cooldowns(), **data["cooldowns"]}
        return data

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        for name, s in self.detectors.items():
            spec = _SPECS[name]
            bad = sorted(set(s.params) - set(spec.params))
            if bad:
                raise ValueError(f"detectors.{name}.params: unknown {bad}; valid: "
                                 f"{sorted(spec.params)}")  # fmt: skip
            above = spec.direction == "above"
            if (above and s.rearm > s.threshold) or (not above and s.rearm < s.threshold):
                side = "≤" if above else "≥"
                raise ValueError(f"detectors.{name}: rearm ({s.rearm}) must be {side} "
                                 f"threshold ({s.threshold}) for a detector that fires "
                                 f"{spec.direction} it")  # fmt: skip
        for field_name in ("instability_detectors", "rollback_detectors", "collapse_evidence",
                           "length_detectors", "stale_detectors"):
            bad = sorted(set(getattr(self, field_name)) - set(_SPECS))
            if bad:
                raise ValueError(f"{field_name}: unknown detector(s) {bad}; valid: "
                                 f"{sorted(_SPECS)}")  # fmt: skip
        for kind, steps in self.cooldowns.items():
            if steps < 0:
                raise ValueError(f"cooldowns.{kind.value}: must be ≥ 0, got {steps}")
        return self

    def detector(self, name: str) -> DetectorSettings:
        return self.detectors[name]


DEFAULT_POLICY = PolicyConfig()
