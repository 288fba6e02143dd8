"""The detector catalogue: one row per detector with its signal, defaults and policy action.

The policy's defaults (`rlkeel.server.policy.config`) and the README table are generated from
this list, so a threshold lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlkeel.client.schemas import Severity

__all__ = ["DETECTORS", "SAMPLE_DETECTORS", "STEP_DETECTORS", "DetectorSpec"]

Direction = Literal["above", "below"]


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    scope: Literal["sample", "step"]
    metric: str
    signal: str
    """What is watched, in words (README table)."""
    direction: Direction
    """`above`: fires when the statistic exceeds `threshold`, re-arms below `rearm`."""
    threshold: float
    rearm: float
    warmup: int
    """Observations before the detector may fire."""
    cooldown: int
    """Steps of silence after it fired."""
    severity: Severity
    action: str
    """What the default policy does about it (README table)."""
    params: dict[str, float] = field(default_factory=dict)


_S, _T = "sample", "step"
_DROP = "drop the sample (skip the step past max_drop_frac)"
_TOKEN_INSTAB = "counts toward switch_algorithm → gspo (token-level algorithms)"

DETECTORS: tuple[DetectorSpec, ...] = (
    # ---- per sample, against the batch and the run's recent samples (robust z, median/MAD)
    DetectorSpec("sample_nonfinite", _S, "reward/advantage/kl/log_ratio_max",
                 "a per-sample number is NaN or ±inf", "above", 0.5, 0.5, 0, 0,
                 Severity.high, _DROP),
    DetectorSpec("sample_length_z", _S, "length", "robust z of log(1+length) (scale ≥ the batch's own)", "above",
                 6.0, 4.0, 64, 0, Severity.warning, _DROP, {"mad_floor": 0.05}),
    DetectorSpec("sample_kl_z", _S, "kl", "robust z of log(kl + 1e-4) (higher threshold: "
                 "per-sample KL is heavy-tailed)", "above", 8.0, 5.0, 64, 0, Severity.warning,
                 _DROP, {"mad_floor": 0.1}),
    DetectorSpec("sample_advantage_z", _S, "advantage", "robust z of |advantage| (the MAD "
                 "floor keeps GRPO's bounded group advantages quiet)", "above",
                 6.0, 4.0, 64, 0, Severity.warning, _DROP, {"mad_floor": 0.5}),
    DetectorSpec("sample_log_ratio_z", _S, "log_ratio_max",
                 "robust z of log(max |log ρ| + 1e-3)", "above", 6.0, 4.0, 64, 0,
                 Severity.warning, _DROP, {"mad_floor": 0.1}),
    DetectorSpec("sample_repetition_loop", _S, "repetition",
                 "truncated and repetition ≥ threshold (a loop)", "above", 0.5, 0.5, 0, 0,
                 Severity.warning, _DROP),
    DetectorSpec("sample_grad_share", _S, "grad_share",
                 "|A|·length / Σ|A|·length over the samples with A ≠ 0, cap = max(threshold, "
                 "min_multiple/N), only samples ≥ min_length_multiple × the median length",
                 "above", 0.05, 0.05, 0, 0, Severity.warning, _DROP,
                 {"min_multiple": 16.0, "min_length_multiple": 2.0}),
    DetectorSpec("sample_isolation_forest", _S, "features",
                 "IsolationForest anomaly score (0.5 normal, → 1 anomalous) on log length, |A|, "
                 "kl, log-ratio, entropy, repetition, truncated; above threshold it confirms "
                 "another detector's flag, alone it needs solo_threshold", "above", 0.72, 0.65,
                 0, 0, Severity.warning, _DROP,
                 {"min_rows": 512.0, "refit_every": 50.0, "n_estimators": 100.0,
                  "solo_threshold": 0.8}),
    # ---- per step: spikes (robust z of the log value against the recent median, and a ratio)
    DetectorSpec("kl_spike", _T, "kl_mean", "robust z of log kl_mean against the median of "
                 "the last 10 steps (scale: successive differences over 50), and ≥ min_ratio × "
                 "that median", "above", 5.0, 3.0, 20, 10, Severity.warning, _TOKEN_INSTAB,
                 {"mad_floor": 0.05, "min_ratio": 2.5}),
    DetectorSpec("grad_norm_spike", _T, "grad_norm", "robust z of log grad_norm, as kl_spike",
                 "above", 5.0, 3.0, 20, 5, Severity.warning, "repeated: scale_lr × 0.5",
                 {"mad_floor": 0.05, "min_ratio": 5.0}),
    DetectorSpec("clip_frac_spike", _T, "clip_frac", "robust z of log clip_frac, as kl_spike",
                 "above", 6.0, 3.0, 20, 10, Severity.warning, _TOKEN_INSTAB,
                 {"mad_floor": 0.1, "min_ratio": 5.0}),
    DetectorSpec("log_ratio_spike", _T, "log_ratio_abs_max",
                 "robust z of log log_ratio_abs_max, as kl_spike", "above", 5.0, 3.0, 20, 10,
                 Severity.warning, _TOKEN_INSTAB, {"mad_floor": 0.05, "min_ratio": 2.5}),
    # ---- per step: drifts (one-sided CUSUM of Holt forecast errors in σ, slack k per step)
    DetectorSpec("reward_decline", _T, "reward_mean", "lower CUSUM of reward_mean against its "
                 "level (no trend: healthy rewards do not fall)", "above", 12.0, 4.0, 50, 50,
                 Severity.warning, "finding only", {"k": 1.0, "alpha": 0.05, "max_slope": 0.0}),
    DetectorSpec("length_growth", _T, "length_mean", "upper CUSUM of log length_mean against "
                 "its own trend (Holt forecast)", "above", 16.0, 4.0, 50, 50, Severity.warning,
                 "finding only", {"k": 2.0, "alpha": 0.2, "max_slope": 0.005}),
    DetectorSpec("entropy_slide", _T, "entropy_mean", "lower CUSUM of log entropy_mean against "
                 "its own trend (Holt forecast)", "above", 16.0, 4.0, 50, 50, Severity.warning,
                 "finding only", {"k": 2.0, "alpha": 0.2, "max_slope": 0.005}),
    # ---- per step: hard rules
    DetectorSpec("nonfinite_step", _T, "loss/grad_norm", "loss, policy/value loss or grad norm "
                 "is NaN or ±inf", "above", 0.5, 0.5, 0, 0, Severity.critical,
                 "rollback to the last healthy step; stop if it repeats"),
    DetectorSpec("entropy_floor", _T, "entropy_mean", "entropy_mean below the floor (collapse)",
                 "below", 0.03, 0.06, 0, 20, Severity.high,
                 "rollback to the last healthy step; stop if it repeats"),
    DetectorSpec("truncation_rate", _T, "truncation_rate", "share of truncated responses",
                 "above", 0.25, 0.15, 5, 20, Severity.warning, "finding only"),
    DetectorSpec("low_positive_frac", _T, "positive_frac",
                 "positive_frac below threshold for `sustain` steps (a step between threshold and "
                 "re-arm holds the count)", "below", 0.10,
                 0.15, 0, 50, Severity.warning, "positive_emphasis advantage_scale × 2",
                 {"sustain": 10.0}),
    DetectorSpec("zero_std_groups", _T, "zero_std_group_frac",
                 "share of groups whose rewards are all equal (no gradient) above threshold for "
                 "`sustain` steps", "above", 0.8, 0.6, 5, 50, Severity.warning, "finding only",
                 {"sustain": 3.0}),
    DetectorSpec("critic_explained_variance", _T, "explained_variance",
                 "PPO critic explained variance below threshold for `sustain` steps", "below",
                 0.0, 0.2, 20, 50, Severity.warning,
                 "PPO with verifiable rewards: switch_algorithm → grpo", {"sustain": 10.0}),
    DetectorSpec("clip_frac_range", _T, "clip_frac",
                 "clip_frac above the algorithm's range: token-level > token_level_max "
                 "(on-policy ≈ 1e-3), GSPO > gspo_max (normal 0.1–0.3), any > threshold "
                 "(stale rollouts)", "above", 0.4, 0.3, 5, 20, Severity.warning,
                 _TOKEN_INSTAB, {"token_level_max": 0.2, "gspo_max": 0.4}),
)  # fmt: skip

SAMPLE_DETECTORS = tuple(d.name for d in DETECTORS if d.scope == "sample")
STEP_DETECTORS = tuple(d.name for d in DETECTORS if d.scope == "step")
