"""Per-sample detectors over one rollout report, against the batch and the run's history.

Sample flags (which become drops) are raised for every sample past a threshold once the
detector is warm; the batch-level `Finding` of a detector goes through its gate (cool-down and
hysteresis on the report's worst statistic), so a run that keeps producing outliers is not a
stream of identical alerts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rlkeel.client.schemas import SampleStats, StepReport
from rlkeel.server.detectors import forest as forest_mod
from rlkeel.server.detectors.findings import Finding
from rlkeel.server.detectors.state import RunDetectorState
from rlkeel.server.detectors.stats import finite, robust_center_scale

if TYPE_CHECKING:
    from rlkeel.server.policy.config import DetectorSettings, PolicyConfig

__all__ = ["RolloutEvaluation", "evaluate_rollout"]

HISTORY_PER_REPORT = 128  # values per metric a report adds to the history (evenly spaced)


@dataclass
class RolloutEvaluation:
    findings: list[Finding] = field(default_factory=list)
    sample_flags: dict[str, list[str]] = field(default_factory=dict)
    """sample_id → detectors that flagged it, in catalogue order."""


def _log_len(s: SampleStats) -> float | None:
    return math.log1p(s.length)


def _log_kl(s: SampleStats) -> float | None:
    return math.log(max(s.kl, 0.0) + 1e-4) if finite(s.kl) else None  # type: ignore[arg-type]


def _abs_adv(s: SampleStats) -> float | None:
    return abs(s.advantage) if finite(s.advantage) else None


def _log_ratio(s: SampleStats) -> float | None:
    v = s.log_ratio_max
    return math.log(abs(v) + 1e-3) if finite(v) else None  # type: ignore[arg-type]


# detector, metric name in findings, transform (None: the sample has no usable value)
_Z_DETECTORS: tuple[tuple[str, str, Callable[[SampleStats], float | None]], ...] = (
    ("sample_length_z", "length", _log_len),
    ("sample_kl_z", "kl", _log_kl),
    ("sample_advantage_z", "advantage", _abs_adv),
    ("sample_log_ratio_z", "log_ratio_max", _log_ratio),
)


def _nonfinite(s: SampleStats) -> bool:
    vals = (s.reward, s.advantage, s.kl, s.log_ratio_max, s.entropy)
    return any(v is not None and not math.isfinite(v) for v in vals)


def _spaced(values: list[float], n: int) -> list[float]:
    if len(values) <= n:
        return values
    idx = np.linspace(0, len(values) - 1, n).round().astype(int)
    return [values[i] for i in idx]


class _Collector:
    def __init__(self, state: RunDetectorState, step: int) -> None:
        self.state, self.step = state, step
        self.findings: list[Finding] = []
        self.flags: dict[str, list[str]] = {}

    def flag(self, sample_id: str, reason: str) -> None:
        reasons = self.flags.setdefault(sample_id, [])
        if reason not in reasons:
            reasons.append(reason)

    def gated(self, name: str, s: DetectorSettings, *, worst: float, ids: list[str],
              metric: str, baseline: float | None, threshold: float, message: str) -> None:  # fmt: skip
        exceeded = bool(ids)
        fired = self.state.gate(name).observe(
            self.step, exceeded=exceeded, rearmed=worst < s.rearm, warmup=0, cooldown=s.cooldown
        )
        if fired:
            self.findings.append(Finding(name, s.severity, metric, worst, baseline, threshold,
                                         self.step, message, list(ids)))  # fmt: skip


def evaluate_rollout(state: RunDetectorState, report: StepReport,
                     policy_cfg: PolicyConfig) -> RolloutEvaluation:  # fmt: skip
    """Flag outlier samples of a rollout report and update the run's state (never fits)."""
    state.rollout_step = report.step
    state.rollout_metrics = dict(report.metrics)
    samples = report.samples
    out = _Collector(state, report.step)
    if not samples:
        return RolloutEvaluation()
    cfg = policy_cfg

    # Non-finite numbers poison the loss: always flagged.
    s = cfg.detector("sample_nonfinite")
    bad = [x.sample_id for x in samples if _nonfinite(x)]
    if s.enabled:
        for sid in bad:
            out.flag(sid, "sample_nonfinite")
        out.gated("sample_nonfinite", s, worst=float(len(bad)), ids=bad, metric="samples",
                  baseline=0.0, threshold=s.threshold,
                  message=f"{len(bad)} sample(s) with NaN or infinite numbers")  # fmt: skip

    # Robust z against the batch together with the run's recent samples.
    for name, metric, transform in _Z_DETECTORS:
        s = cfg.detector(name)
        pairs = [(x.sample_id, v) for x in samples if (v := transform(x)) is not None]
        if not pairs:
            continue
        hist = state.history(name)
        batch = np.fromiter((v for _, v in pairs), float, len(pairs))
        hits: list[str] = []
        if s.enabled and len(hist) + len(batch) >= max(s.warmup, 2):
            base = np.concatenate([np.fromiter(hist, float, len(hist)), batch])
            med, scale = robust_center_scale(base, s.params["mad_floor"])
            z = (batch - med) / scale
            order = np.argsort(-z, kind="stable")
            hits = [pairs[i][0] for i in order if z[i] > s.threshold]
            for sid in hits:
                out.flag(sid, name)
            worst = float(z[order[0]])
            out.gated(name, s, worst=worst, ids=hits, metric=metric, baseline=med,
                      threshold=s.threshold,
                      message=f"{len(hits)} sample(s) with robust z of {metric} above "
                              f"{s.threshold:g} (max z {worst:.1f})")  # fmt: skip
        hit_set = set(hits)
        hist.extend(_spaced([v for sid, v in pairs if sid not in hit_set], HISTORY_PER_REPORT))

    # Repetition loops: truncated and repetitive.
    s = cfg.detector("sample_repetition_loop")
    if s.enabled:
        loops = [x.sample_id for x in samples
                 if x.truncated and x.repetition is not None and x.repetition >= s.threshold]  # fmt: skip
        for sid in loops:
            out.flag(sid, "sample_repetition_loop")
        out.gated("sample_repetition_loop", s, worst=1.0 if loops else 0.0, ids=loops,
                  metric="repetition", baseline=None, threshold=s.threshold,
                  message=f"{len(loops)} truncated sample(s) with repetition ≥ "
                          f"{s.threshold:g}: looping")  # fmt: skip

    # Share of the gradient weight |A|·length: one long, high-advantage sample dominates a
    # token-level loss. The cap never goes below min_multiple × the uniform share 1/N.
    s = cfg.detector("sample_grad_share")
    good = [x for x in samples if finite(x.advantage)]
    if s.enabled and len(good) >= 2:
        w = np.array([abs(x.advantage) * x.length for x in good], dtype=float)
        total = float(w.sum())
        if total > 0 and math.isfinite(total):
            share = w / total
            cap = max(s.threshold, s.params["min_multiple"] / len(good))
            order = np.argsort(-share, kind="stable")
            hits = [good[i].sample_id for i in order if share[i] > cap]
            for sid in hits:
                out.flag(sid, "sample_grad_share")
            worst = float(share[order[0]])
            out.gated("sample_grad_share", s, worst=worst if hits else 0.0, ids=hits,
                      metric="grad_share", baseline=1.0 / len(good), threshold=cap,
                      message=f"{len(hits)} sample(s) carry more than {cap:.3g} of the "
                              f"batch's |A|·length (max {worst:.3g})")  # fmt: skip

    # IsolationForest: score with the last fitted model only.
    s = cfg.detector("sample_isolation_forest")
    feats = [(x.sample_id, r) for x in samples if (r := forest_mod.sample_features(x)) is not None]
    hit_set = set()
    if s.enabled and feats:
        scores = forest_mod.anomaly_scores(state.forest, [r for _, r in feats])
        if scores is not None:
            order = np.argsort(-scores, kind="stable")
            hits = [feats[i][0] for i in order if scores[i] > s.threshold]
            hit_set = set(hits)
            for sid in hits:
                out.flag(sid, "sample_isolation_forest")
            worst = float(scores[order[0]])
            out.gated("sample_isolation_forest", s, worst=worst, ids=hits, metric="features",
                      baseline=0.5, threshold=s.threshold,
                      message=f"{len(hits)} sample(s) with IsolationForest anomaly score "
                              f"above {s.threshold:g} (max {worst:.2f})")  # fmt: skip
    forest_mod.add_rows(state.forest, [r for sid, r in feats if sid not in hit_set])

    order_of = {name: i for i, name in enumerate(_FLAG_ORDER)}
    flags = {sid: sorted(r, key=order_of.__getitem__) for sid, r in out.flags.items()}
    return RolloutEvaluation(out.findings, flags)


_FLAG_ORDER = ("sample_nonfinite", *(n for n, _, _ in _Z_DETECTORS), "sample_repetition_loop",
               "sample_grad_share", "sample_isolation_forest")  # fmt: skip
