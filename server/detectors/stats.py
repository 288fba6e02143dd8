"""Bounded building blocks: robust centre/scale, a gate with warm-up/cool-down/hysteresis,
fixed windows and one-sided CUSUM. Every piece serialises to a JSON-able dict."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAD_SCALE", "Cusum", "Gate", "finite", "robust_center_scale", "robust_window_stats",
           "spike_baseline", "window_from"]

MAD_SCALE = 1.4826  # MAD → σ for a normal distribution


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def robust_center_scale(values: np.ndarray, mad_floor: float) -> tuple[float, float]:
    """Median and 1.4826·MAD, the scale floored so a constant history cannot make z infinite."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med, max(MAD_SCALE * mad, mad_floor)


def _median_sorted(xs: list[float]) -> float:
    n = len(xs)
    mid = n // 2
    return xs[mid] if n % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def robust_window_stats(values: Iterable[float], mad_floor: float) -> tuple[float, float]:
    """`robust_center_scale` for short windows in pure Python (no numpy call overhead)."""
    xs = sorted(values)
    med = _median_sorted(xs)
    mad = _median_sorted(sorted(abs(x - med) for x in xs))
    return med, max(MAD_SCALE * mad, mad_floor)


def window_from(data: Iterable[float], maxlen: int) -> deque[float]:
    return deque((float(x) for x in data), maxlen=maxlen)


@dataclass
class Gate:
    """Warm-up, cool-down and hysteresis for one detector of one run.

    `observe` is called once per finite observation; the detector fires when the statistic is
    past the threshold, the gate is armed, the warm-up is over and the cool-down has elapsed.
    After firing it is disarmed until the statistic comes back past `rearm`.
    """

    seen: int = 0
    armed: bool = True
    last_fired: int | None = None

    def observe(self, step: int, *, exceeded: bool, rearmed: bool, warmup: int,
                cooldown: int) -> bool:  # fmt: skip
        self.seen += 1
        if rearmed and not exceeded:
            self.armed = True
        if self.seen <= warmup or not exceeded or not self.armed:
            return False
        if self.last_fired is not None and step >= self.last_fired:
            if step - self.last_fired <= cooldown:
                return False
        # A step number below the last firing means the run rolled back: the cool-down resets.
        self.armed = False
        self.last_fired = step
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "armed": self.armed, "last_fired": self.last_fired}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gate:
        return cls(seen=int(d["seen"]), armed=bool(d["armed"]), last_fired=d["last_fired"])


def spike_baseline(window: Sequence[float], mad_floor: float,
                   recent: int = 10) -> tuple[float, float]:  # fmt: skip
    """(baseline, scale) of a spike detector's window of (log) values.

    The baseline is the median of the `recent` last values, so a healthy trend (KL to the
    reference rising through a run) does not read as a spike; the scale comes from the
    successive differences of the whole window (σ ≈ 1.4826·median|Δx|/√2), which a trend or a
    slow wander inflates far less than the window's own MAD would.
    """
    xs = list(window)
    base = _median_sorted(sorted(xs[-recent:]))
    diffs = sorted(abs(b - a) for a, b in zip(xs, xs[1:], strict=False))
    scale = MAD_SCALE * _median_sorted(diffs) / math.sqrt(2.0) if diffs else 0.0
    return base, max(scale, mad_floor)


@dataclass
class Cusum:
    """One-sided CUSUM of standardised one-step forecast errors, S_t = max(0, S_{t-1} + z_t − k).

    The forecast is Holt's linear smoothing (a level and a slope), so a run's steady healthy
    course — entropy slowly falling, responses slowly growing — is predicted rather than
    alarmed on: only a *change of course* makes errors of one sign pile up. σ is the robust
    scale (1.4826 · median |error|) of the last `WINDOW` forecast errors made while S was 0, so
    slow healthy wander is part of the noise but a drift under way does not widen σ. The level and slope learn from errors winsorised at ±`CLIP`·σ: noise
    is followed, an event teaches the forecast only slowly and keeps accumulating. `k` is the
    slack in σ per step: errors that stay under kσ never accumulate.
    """

    direction: int  # +1: watch increases, −1: watch decreases
    s: float = 0.0
    level: float | None = None
    slope: float = 0.0
    n: int = 0
    errors: deque[float] | None = None
    """|forecast error| of the last WINDOW values."""

    ALPHA = 0.2  # level smoothing (default)
    BETA = 0.05  # slope smoothing
    CLIP = 1.5
    WINDOW = 50
    MIN_ERRORS = 20

    def __post_init__(self) -> None:
        if self.errors is None:
            self.errors = deque(maxlen=self.WINDOW)

    def update(self, x: float, k: float, cap: float, *, warmup: int = 0, alpha: float = ALPHA,
               max_slope: float = math.inf) -> tuple[float, float, float]:  # fmt: skip
        """Add x; return (S, the forecast x was compared with, σ). S stays 0 while fewer than
        `MIN_ERRORS` errors are known or during the first `warmup` values. The forecast follows
        a trend of at most `max_slope` per step (0: a level only), so a steady move faster than
        a healthy run's accumulates however gently it began."""
        assert self.errors is not None
        self.n += 1
        if self.level is None:
            self.level = x
            return 0.0, x, 0.0
        forecast = self.level + self.slope
        err = x - forecast
        sigma = MAD_SCALE * _median_sorted(sorted(self.errors)) if self.errors else 0.0
        sigma = max(sigma, 1e-6 * max(1.0, abs(self.level)))
        ready = len(self.errors) >= self.MIN_ERRORS
        in_control = self.s == 0.0
        if ready and self.n > warmup:
            z = self.direction * err / sigma
            self.s = min(max(0.0, self.s + z - k), cap)
        if in_control or not ready:  # a drift under way must not widen its own yardstick
            self.errors.append(abs(err))
        learn = min(max(err, -self.CLIP * sigma), self.CLIP * sigma) if ready else err
        level = forecast + alpha * learn
        slope = (1.0 - self.BETA) * self.slope + self.BETA * (level - self.level)
        self.slope = min(max(slope, -max_slope), max_slope)
        self.level = level
        return self.s, forecast, sigma

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "s": self.s, "level": self.level,
                "slope": self.slope, "n": self.n, "errors": list(self.errors or ())}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cusum:
        return cls(direction=int(d["direction"]), s=float(d["s"]), level=d["level"],
                   slope=float(d["slope"]), n=int(d["n"]),
                   errors=window_from(d["errors"], cls.WINDOW))  # fmt: skip
