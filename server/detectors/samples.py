"""Per-sample detectors over one rollout report, against the batch and the run's history.

Sample flags (which become drops) are raised for every sample past a threshold once the
detector is warm; the batch-level `Finding` of a detector goes through its gate (cool-down and
hysteresis on the report's worst statistic), so a run that keeps producing outliers is not a
stream of identical alerts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rlkeel.client.schemas import SampleStats, StepReport
from rlkeel.server.detectors import forest as forest_mod
from rlkeel.server.detectors.findings import Finding
from rlkeel.server.detectors.state import RunDetectorState
from rlkeel.server.detectors.stats import robust_center_scale

if TYPE_CHECKING:
    from rlkeel.server.policy.config import DetectorSettings, PolicyConfig

__all__ = ["RolloutEvaluation", "SampleColumns", "evaluate_rollout"]

HISTORY_PER_REPORT = 128  # values per metric a report adds to the history (evenly spaced)
SHIFT_FRAC = 0.25  # more of a batch past a robust-z threshold than this is a shift, not outliers


@dataclass
class RolloutEvaluation:
    findings: list[Finding] = field(default_factory=list)
    sample_flags: dict[str, list[str]] = field(default_factory=dict)
    """sample_id → detectors that flagged it, in catalogue order."""


@dataclass(frozen=True)
class SampleColumns:
    """A report's samples as column arrays: the detectors work on these, not on per-sample
    objects (one pass over the objects, then numpy). A missing optional number is NaN in its
    column and False in its `has_*` mask; reward and advantage are always present."""

    ids: list[str]
    length: np.ndarray
    truncated: np.ndarray
    reward: np.ndarray
    advantage: np.ndarray
    kl: np.ndarray
    log_ratio_max: np.ndarray
    entropy: np.ndarray
    repetition: np.ndarray
    has_kl: np.ndarray
    has_log_ratio_max: np.ndarray
    has_entropy: np.ndarray
    has_repetition: np.ndarray

    @classmethod
    def of(cls, samples: Sequence[SampleStats]) -> SampleColumns:
        n = len(samples)

        def optional(values: list[float | None]) -> tuple[np.ndarray, np.ndarray]:
            if None not in values:  # the common case: one C-level conversion
                return np.array(values, dtype=np.float64), np.ones(n, dtype=bool)
            has = np.array([v is not None for v in values], dtype=bool)
            return np.array([math.nan if v is None else v for v in values], np.float64), has

        kl, has_kl = optional([x.kl for x in samples])
        lr, has_lr = optional([x.log_ratio_max for x in samples])
        ent, has_ent = optional([x.entropy for x in samples])
        rep, has_rep = optional([x.repetition for x in samples])
        return cls(ids=[x.sample_id for x in samples],
                   length=np.array([x.length for x in samples], dtype=np.float64),
                   truncated=np.array([x.truncated for x in samples], dtype=bool),
                   reward=np.array([x.reward for x in samples], dtype=np.float64),
                   advantage=np.array([x.advantage for x in samples], dtype=np.float64),
                   kl=kl, log_ratio_max=lr, entropy=ent, repetition=rep, has_kl=has_kl,
                   has_log_ratio_max=has_lr, has_entropy=has_ent, has_repetition=has_rep)  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def pick(self, selector: np.ndarray) -> list[str]:
        """Sample ids by a boolean mask or by an array of positions (in that order)."""
        index = np.flatnonzero(selector) if selector.dtype == bool else selector
        return [self.ids[i] for i in index.tolist()]


# The robust-z transforms, column-wise: (values, usable mask). `with np.errstate`: NaN and
# ±inf pass through the arithmetic and are masked out.
def _log_len(c: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
    return np.log1p(c.length), np.ones(len(c), dtype=bool)


def _log_kl(c: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
    return np.log(np.maximum(c.kl, 0.0) + 1e-4), np.isfinite(c.kl)


def _abs_adv(c: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
    return np.abs(c.advantage), np.isfinite(c.advantage)


def _log_ratio(c: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
    return np.log(np.abs(c.log_ratio_max) + 1e-3), np.isfinite(c.log_ratio_max)


# detector, metric name in findings, transform
_Z_DETECTORS: tuple[
    tuple[str, str, Callable[[SampleColumns], tuple[np.ndarray, np.ndarray]]], ...
] = (
    ("sample_length_z", "length", _log_len),
    ("sample_kl_z", "kl", _log_kl),
    ("sample_advantage_z", "advantage", _abs_adv),
    ("sample_log_ratio_z", "log_ratio_max", _log_ratio),
)


def _nonfinite(c: SampleColumns) -> np.ndarray:
    """Samples with a NaN or ±inf among reward, advantage, kl, log_ratio_max, entropy."""
    bad = ~np.isfinite(c.reward) | ~np.isfinite(c.advantage)
    for col, has in ((c.kl, c.has_kl), (c.log_ratio_max, c.has_log_ratio_max),
                     (c.entropy, c.has_entropy)):  # fmt: skip
        bad |= has & ~np.isfinite(col)
    return bad


def _spaced(values: np.ndarray, n: int) -> list[float]:
    if len(values) <= n:
        return values.tolist()
    idx = np.linspace(0, len(values) - 1, n).round().astype(int)
    return values[idx].tolist()


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
    state.samples_changed += 1  # history and reservoir take the batch's values below
    cfg = policy_cfg

    cols = SampleColumns.of(samples)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        _evaluate_columns(state, cols, cfg, out)
    order_of = {name: i for i, name in enumerate(_FLAG_ORDER)}
    flags = {sid: sorted(r, key=order_of.__getitem__) for sid, r in out.flags.items()}
    return RolloutEvaluation(out.findings, flags)


_FLAG_ORDER = ("sample_nonfinite", *(n for n, _, _ in _Z_DETECTORS), "sample_repetition_loop",
               "sample_grad_share", "sample_isolation_forest")  # fmt: skip


def _evaluate_columns(state: RunDetectorState, cols: SampleColumns, cfg: PolicyConfig,
                      out: _Collector) -> None:  # fmt: skip
    # Non-finite numbers poison the loss: always flagged.
    s = cfg.detector("sample_nonfinite")
    bad = cols.pick(_nonfinite(cols))
    if s.enabled:
        for sid in bad:
            out.flag(sid, "sample_nonfinite")
        out.gated("sample_nonfinite", s, worst=float(len(bad)), ids=bad, metric="samples",
                  baseline=0.0, threshold=s.threshold,
                  message=f"{len(bad)} sample(s) with NaN or infinite numbers")  # fmt: skip

    # Robust z against the batch together with the run's recent samples.
    for name, metric, transform in _Z_DETECTORS:
        s = cfg.detector(name)
        values, usable = transform(cols)
        where = np.flatnonzero(usable)
        if len(where) == 0:
            continue
        hist = state.history(name)
        batch = values[where]
        keep = np.ones(len(where), dtype=bool)
        learned = batch
        if s.enabled and len(hist) + len(batch) >= max(s.warmup, 2):
            base = np.concatenate([np.fromiter(hist, float, len(hist)), batch])
            med, scale = robust_center_scale(base, s.params["mad_floor"])
            # The batch's own spread floors the scale: a history whose MAD is 0 (KL exactly 0
            # for every sample at step 0) must not make the whole next batch "outliers".
            scale = max(scale, robust_center_scale(batch, 0.0)[1])
            z = (batch - med) / scale
            if np.count_nonzero(z > s.threshold) > SHIFT_FRAC * len(batch):
                # A large part of the batch past the threshold is a shift of the whole run
                # (a step detector's business) or a stale history, not outliers: judge the
                # batch against itself.
                med, scale = robust_center_scale(batch, s.params["mad_floor"])
                z = (batch - med) / scale
            order = np.argsort(-z, kind="stable")
            hit_order = order[z[order] > s.threshold]
            hits = cols.pick(where[hit_order])
            for sid in hits:
                out.flag(sid, name)
            worst = float(z[order[0]])
            out.gated(name, s, worst=worst, ids=hits, metric=metric, baseline=med,
                      threshold=s.threshold,
                      message=f"{len(hits)} sample(s) with robust z of {metric} above "
                              f"{s.threshold:g} (max z {worst:.1f})")  # fmt: skip
            # Flagged samples enter the history clipped at the threshold: a lone outlier
            # barely moves the median, while a lasting shift of the whole run is learned
            # (leaving flagged samples out kept a stale history flagging everything forever).
            learned = np.minimum(batch, med + s.threshold * scale)
        hist.extend(_spaced(learned, HISTORY_PER_REPORT))

    # Repetition loops: truncated and repetitive.
    s = cfg.detector("sample_repetition_loop")
    if s.enabled:
        loops = cols.pick(cols.truncated & cols.has_repetition & (cols.repetition >= s.threshold))
        for sid in loops:
            out.flag(sid, "sample_repetition_loop")
        out.gated("sample_repetition_loop", s, worst=1.0 if loops else 0.0, ids=loops,
                  metric="repetition", baseline=None, threshold=s.threshold,
                  message=f"{len(loops)} truncated sample(s) with repetition ≥ "
                          f"{s.threshold:g}: looping")  # fmt: skip

    # Share of the gradient weight |A|·length: one long, high-advantage sample dominates a
    # token-level loss. Shares are over the samples that carry a gradient (A ≠ 0); the cap
    # never goes below min_multiple × the uniform share 1/N, and only long samples (length ≥
    # min_length_multiple × the batch median) are flagged: a short sample with a large |A| is
    # a normal GRPO group with one success.
    s = cfg.detector("sample_grad_share")
    good = np.flatnonzero(np.isfinite(cols.advantage) & (cols.advantage != 0))
    if s.enabled and len(good) >= 2:
        w = np.abs(cols.advantage[good]) * cols.length[good]
        total = float(w.sum())
        if total > 0 and math.isfinite(total):
            share = w / total
            cap = max(s.threshold, s.params["min_multiple"] / len(good))
            long_ = cols.length[good] >= s.params["min_length_multiple"] * np.median(cols.length)
            order = np.argsort(-share, kind="stable")
            hits = cols.pick(good[order[(share[order] > cap) & long_[order]]])
            for sid in hits:
                out.flag(sid, "sample_grad_share")
            worst = float(share[order[0]])
            out.gated("sample_grad_share", s, worst=worst if hits else 0.0, ids=hits,
                      metric="grad_share", baseline=1.0 / len(good), threshold=cap,
                      message=f"{len(hits)} sample(s) carry more than {cap:.3g} of the "
                              f"batch's |A|·length (max {worst:.3g})")  # fmt: skip

    # IsolationForest: score with the last fitted model only.
    s = cfg.detector("sample_isolation_forest")
    rows, where = forest_mod.feature_matrix(cols)
    keep = np.ones(len(where), dtype=bool)
    if s.enabled and len(where):
        scores = forest_mod.anomaly_scores(state.forest, rows)
        if scores is not None:
            # Supporting evidence: past `threshold` the forest confirms a sample another
            # detector flagged; alone it needs `solo_threshold` (a healthy batch always has
            # a few samples the forest finds unusual).
            seconded = np.array([sid in out.flags for sid in cols.pick(where)], dtype=bool)
            passed = ((scores > s.threshold) & seconded) | (scores > s.params["solo_threshold"])
            order = np.argsort(-scores, kind="stable")
            hit_order = order[passed[order]]
            hits = cols.pick(where[hit_order])
            keep[hit_order] = False
            for sid in hits:
                out.flag(sid, "sample_isolation_forest")
            worst = float(scores[hit_order[0]]) if len(hit_order) else float(scores[order[0]])
            out.gated("sample_isolation_forest", s, worst=worst if hits else 0.0, ids=hits,
                      metric="features", baseline=0.5, threshold=s.threshold,
                      message=f"{len(hits)} sample(s) with IsolationForest anomaly score "
                              f"above {s.threshold:g} with another detector's flag, or "
                              f"above {s.params['solo_threshold']:g} (max {worst:.2f})")  # fmt: skip
    forest_mod.add_rows(state.forest, rows[keep])
