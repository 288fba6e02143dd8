"""Per-step detectors over the run's time series: spikes, drifts and hard rules.

Spikes: robust z of the log of the metric against the median of the last 10 finite values,
scaled by the successive differences of the last 50 — KL, grad norm, clip fraction and
log-ratio are positive and heavy-tailed, and a ×k jump is the same event at any scale — and
at least `min_ratio` × that median. Drifts: one-sided CUSUM (`stats.Cusum`). Hard rules compare with
fixed bounds. Non-finite values never enter a window; only `nonfinite_step` looks at them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rlkeel.client.schemas import Algorithm, Severity, StepReport
from rlkeel.server.detectors.findings import Finding
from rlkeel.server.detectors.state import RunDetectorState
from rlkeel.server.detectors.stats import finite, spike_baseline

if TYPE_CHECKING:
    from rlkeel.server.policy.config import DetectorSettings, PolicyConfig

__all__ = ["NONFINITE_METRICS", "evaluate_update"]

NONFINITE_METRICS = ("loss", "policy_loss", "value_loss", "grad_norm")
# detector, metric, additive floor inside the log
_SPIKES = (
    ("kl_spike", "kl_mean", 1e-6),
    ("grad_norm_spike", "grad_norm", 1e-8),
    ("clip_frac_spike", "clip_frac", 1e-4),
    ("log_ratio_spike", "log_ratio_abs_max", 1e-4),
)
# detector, metric, direction (+1 growth, −1 decline), log-transform
_DRIFTS = (
    ("reward_decline", "reward_mean", -1, False),
    ("length_growth", "length_mean", +1, True),
    ("entropy_slide", "entropy_mean", -1, True),
)
_SEQUENCE_LEVEL = (Algorithm.gspo, Algorithm.gspo_token)


class _Steps:
    def __init__(self, state: RunDetectorState, cfg: PolicyConfig, step: int) -> None:
        self.state, self.cfg, self.step = state, cfg, step
        self.findings: list[Finding] = []

    def check(self, name: str, s: DetectorSettings, *, exceeded: bool, rearmed: bool,
              metric: str, value: float | None, baseline: float | None, threshold: float,
              message: str, severity: Severity | None = None) -> None:  # fmt: skip
        fired = self.state.gate(name).observe(self.step, exceeded=exceeded, rearmed=rearmed,
                                              warmup=s.warmup, cooldown=s.cooldown)  # fmt: skip
        if fired and s.enabled:
            self.findings.append(Finding(name, severity or s.severity, metric, value, baseline,
                                         threshold, self.step, message))  # fmt: skip


def evaluate_update(state: RunDetectorState, report: StepReport,
                    policy_cfg: PolicyConfig) -> list[Finding]:  # fmt: skip
    """Run the per-step detectors on an update report (plus its step's rollout metrics)."""
    metrics: dict[str, float] = {}
    if state.rollout_step == report.step:
        metrics.update(state.rollout_metrics)
    metrics.update(report.metrics)
    cfg = policy_cfg
    run = _Steps(state, cfg, report.step)

    def finite_metric(name: str) -> float | None:
        v = metrics.get(name)
        return float(v) if finite(v) else None

    # Hard rule: non-finite loss or grad norm.
    s = cfg.detector("nonfinite_step")
    bad = [k for k in NONFINITE_METRICS if k in metrics and not math.isfinite(metrics[k])]
    run.check("nonfinite_step", s, exceeded=bool(bad), rearmed=not bad,
              metric=bad[0] if bad else "loss", value=metrics[bad[0]] if bad else None,
              baseline=None, threshold=s.threshold,
              message=f"non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)}")  # fmt: skip

    # Spikes: robust z of log(x) against the recent median, and a minimum ratio to it.
    for name, metric, floor in _SPIKES:
        x = finite_metric(metric)
        if x is None or x < 0:
            continue
        s = cfg.detector(name)
        y = math.log(x + floor)
        win = state.window(name)
        z, med = 0.0, y
        if len(win) >= 5:
            med, scale = spike_baseline(win, s.params["mad_floor"])
            z = (y - med) / scale
        base = math.exp(med) - floor
        # z alone fires on a ×1.3 wiggle of a very quiet series: a spike is also at least
        # min_ratio × the recent level, and sudden — most of the rise happened since the last
        # step (a noisy series that climbs for several steps is a drift, not a spike).
        rise = y - med
        big = rise >= math.log(s.params["min_ratio"]) and (not win or y - win[-1] >= 0.5 * rise)
        run.check(name, s, exceeded=z > s.threshold and big, rearmed=z < s.rearm,
                  metric=metric, value=x, baseline=base, threshold=s.threshold,
                  message=f"{metric} spiked to {x:.4g} (recent median {base:.4g}, "
                          f"robust z {z:.1f} > {s.threshold:g})")  # fmt: skip
        win.append(y)

    # Drifts: one-sided CUSUM.
    for name, metric, direction, use_log in _DRIFTS:
        x = finite_metric(metric)
        if x is None or (use_log and x <= 0):
            continue
        s = cfg.detector(name)
        y = math.log(x) if use_log else x
        stat, ref, _ = state.cusum(name, direction).update(
            y, s.params["k"], 3 * s.threshold, warmup=s.warmup, alpha=s.params["alpha"],
            max_slope=s.params["max_slope"])
        base = math.exp(ref) if use_log else ref
        what = "rising" if direction > 0 else "falling"
        run.check(name, s, exceeded=stat > s.threshold, rearmed=stat < s.rearm, metric=metric,
                  value=x, baseline=base, threshold=s.threshold,
                  message=f"{metric} keeps {what}: {x:.4g} against a running mean of "
                          f"{base:.4g} (CUSUM {stat:.1f} > {s.threshold:g})")  # fmt: skip

    # Hard rules with fixed bounds.
    x = finite_metric("entropy_mean")
    if x is not None:
        s = cfg.detector("entropy_floor")
        run.check("entropy_floor", s, exceeded=x < s.threshold, rearmed=x > s.rearm,
                  metric="entropy_mean", value=x, baseline=None, threshold=s.threshold,
                  message=f"entropy_mean {x:.4g} is below the floor {s.threshold:g}: "
                          "the policy is collapsing")  # fmt: skip
    x = finite_metric("truncation_rate")
    if x is not None:
        s = cfg.detector("truncation_rate")
        run.check("truncation_rate", s, exceeded=x > s.threshold, rearmed=x < s.rearm,
                  metric="truncation_rate", value=x, baseline=None, threshold=s.threshold,
                  message=f"{x:.1%} of responses hit the length cap "
                          f"(threshold {s.threshold:.0%})")  # fmt: skip
    x = finite_metric("zero_std_group_frac")
    if x is not None:
        s = cfg.detector("zero_std_groups")
        n = _sustain(state, "zero_std_groups", below=x > s.threshold, reset=x < s.rearm)
        sustain = int(s.params["sustain"])
        run.check("zero_std_groups", s, exceeded=n >= sustain, rearmed=x < s.rearm,
                  metric="zero_std_group_frac", value=x, baseline=None, threshold=s.threshold,
                  message=f"{x:.0%} of groups have equal rewards and give no gradient "
                          f"({n} steps above {s.threshold:.0%})")  # fmt: skip
    x = finite_metric("positive_frac")
    if x is not None:
        s = cfg.detector("low_positive_frac")
        n = _sustain(state, "low_positive_frac", below=x < s.threshold, reset=x >= s.rearm)
        sustain = int(s.params["sustain"])
        run.check("low_positive_frac", s, exceeded=n >= sustain, rearmed=x > s.rearm,
                  metric="positive_frac", value=x, baseline=None, threshold=s.threshold,
                  message=f"positive_frac under {s.threshold:.0%} for {n} steps ({x:.1%} now): "
                          "negative gradients dominate")  # fmt: skip
    x = finite_metric("explained_variance")
    if x is not None and report.algorithm == Algorithm.ppo:
        s = cfg.detector("critic_explained_variance")
        n = _sustain(state, "critic_explained_variance", below=x < s.threshold,
                     reset=x >= s.rearm)  # fmt: skip
        sustain = int(s.params["sustain"])
        run.check("critic_explained_variance", s, exceeded=n >= sustain, rearmed=x > s.rearm,
                  metric="explained_variance", value=x, baseline=None, threshold=s.threshold,
                  message=f"critic explained variance under {s.threshold:g} for {n} steps "
                          f"({x:.3g} now): the critic is not fitting")  # fmt: skip
    x = finite_metric("clip_frac")
    if x is not None:
        s = cfg.detector("clip_frac_range")
        stale = s.threshold
        if report.algorithm in _SEQUENCE_LEVEL:
            bound = min(s.params["gspo_max"], stale)
        else:
            bound = min(s.params["token_level_max"], stale)
        rearm_at = bound * (s.rearm / s.threshold if s.threshold > 0 else 1.0)
        severity = Severity.high if x > stale else None
        why = ("stale rollouts?" if x > stale
               else f"above the usual range for {report.algorithm.value}")  # fmt: skip
        run.check("clip_frac_range", s, exceeded=x > bound, rearmed=x < rearm_at,
                  metric="clip_frac", value=x, baseline=None, threshold=bound,
                  message=f"clip_frac {x:.3g} > {bound:g}: {why}", severity=severity)  # fmt: skip
    return run.findings


def _sustain(state: RunDetectorState, name: str, *, below: bool, reset: bool) -> int:
    """Steps the signal has been past the threshold, with hysteresis: a step between the
    threshold and the re-arm level holds the count (noise around the threshold must not
    restart it); only a step back past the re-arm level resets it."""
    n = state.sustain.get(name, 0)
    n = n + 1 if below else (0 if reset else n)
    state.sustain[name] = min(n, 1_000_000)
    return state.sustain[name]
