"""Bounded building blocks: robust centre/scale, a gate with warm-up/cool-down/hysteresis,
fixed windows and one-sided CUSUM. Every piece serialises to a JSON-able dict."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAD_SCALE", "Cusum", "Gate", "finite", "robust_center_scale", "robust_window_stats",
           "window_from"]

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


@dataclass
class Cusum:
    """One-sided CUSUM S_t = max(0, S_{t-1} + sign·(x − μ)/σ − k), capped.

    μ is a slow EWMA of the signal; σ comes from the median absolute successive difference over
    a fixed window (robust to the trend itself: σ ≈ 1.4826·median|Δx|/√2).
    """

    direction: int  # +1: watch increases, −1: watch decreases
    s: float = 0.0
    mean: float | None = None
    last: float | None = None
    diffs: deque[float] | None = None

    ALPHA = 0.02
    WINDOW = 50
    MIN_DIFFS = 20

    def __post_init__(self) -> None:
        if self.diffs is None:
            self.diffs = deque(maxlen=self.WINDOW)

    def update(self, x: float, k: float, cap: float) -> tuple[float, float, float]:
        """Add x; return (S, μ before the update, σ)."""
        assert self.diffs is not None
        if self.mean is None or self.last is None:
            self.mean, self.last = x, x
            return 0.0, x, 0.0
        self.diffs.append(abs(x - self.last))
        sigma = MAD_SCALE * _median_sorted(sorted(self.diffs)) / math.sqrt(2.0)
        sigma = max(sigma, 1e-6 * max(1.0, abs(self.mean)))
        ref = self.mean
        if len(self.diffs) >= self.MIN_DIFFS:  # σ from a handful of differences is too noisy
            z = self.direction * (x - ref) / sigma
            self.s = min(max(0.0, self.s + z - k), cap)
        self.mean = (1.0 - self.ALPHA) * self.mean + self.ALPHA * x
        self.last = x
        return self.s, ref, sigma

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "s": self.s, "mean": self.mean, "last": self.last,
                "diffs": list(self.diffs or ())}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cusum:
        return cls(direction=int(d["direction"]), s=float(d["s"]), mean=d["mean"],
                   last=d["last"], diffs=window_from(d["diffs"], cls.WINDOW))  # fmt: skip
