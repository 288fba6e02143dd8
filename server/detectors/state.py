"""`RunDetectorState`: everything the detectors remember about one run, bounded.

Sizes are fixed whatever the run length: a gate per detector, a 50-step window per spike
detector, a CUSUM per drift detector (plus its 50-value window), 1,024 recent values per
per-sample metric, and the IsolationForest reservoir (1,024 rows) with its training rows.
`to_dict()` gives plain JSON (non-finite floats as strings) and `from_dict()` restores it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rlkeel.server.detectors.forest import ForestState
from rlkeel.server.detectors.stats import Cusum, Gate, window_from

__all__ = ["SAMPLE_HISTORY", "STEP_WINDOW", "RunDetectorState"]

SAMPLE_HISTORY = 1024
STEP_WINDOW = 50
STATE_VERSION = 2


def _enc(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _dec(x: float | str) -> float:
    return float(x)  # float() parses "NaN", "Infinity", "-Infinity"


@dataclass
class RunDetectorState:
    seed: int = 0
    """Seed of the IsolationForest fits (fit n uses seed + n)."""
    gates: dict[str, Gate] = field(default_factory=dict)
    sample_history: dict[str, deque[float]] = field(default_factory=dict)
    windows: dict[str, deque[float]] = field(default_factory=dict)
    cusums: dict[str, Cusum] = field(default_factory=dict)
    sustain: dict[str, int] = field(default_factory=dict)
    forest: ForestState = field(default_factory=ForestState)
    rollout_step: int | None = None
    rollout_metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last rollout report; the update report of the same step sees them too."""
    samples_changed: int = field(default=0, compare=False, repr=False)
    """Bumped whenever `sample_history` or `forest.rows` change (a rollout report with
    samples), so storage knows when to write them again; not itself stored."""

    def gate(self, name: str) -> Gate:
        return self.gates.setdefault(name, Gate())

    def history(self, name: str) -> deque[float]:
        return self.sample_history.setdefault(name, deque(maxlen=SAMPLE_HISTORY))

    def window(self, name: str) -> deque[float]:
        return self.windows.setdefault(name, deque(maxlen=STEP_WINDOW))

    def cusum(self, name: str, direction: int) -> Cusum:
        return self.cusums.setdefault(name, Cusum(direction=direction))

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """The plain-data form; `samples=False` leaves out the recent samples and the forest's
        rows (`sample_history`, `forest.rows`, `forest.fit_rows`), which are stored apart."""
        d: dict[str, Any] = {
            "version": STATE_VERSION,
            "seed": self.seed,
            "gates": {k: g.to_dict() for k, g in sorted(self.gates.items())},
            "windows": {k: list(v) for k, v in sorted(self.windows.items())},
            "cusums": {k: c.to_dict() for k, c in sorted(self.cusums.items())},
            "sustain": dict(sorted(self.sustain.items())),
            "forest": self.forest.to_dict(rows=samples),
            "rollout_step": self.rollout_step,
            "rollout_metrics": {k: _enc(v) for k, v in self.rollout_metrics.items()},
        }
        if samples:
            d["sample_history"] = {k: list(v) for k, v in sorted(self.sample_history.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunDetectorState:
        if d.get("version") == 1:
            # Version 1 had another CUSUM (EWMA reference) and spike baseline: start those
            # afresh (they warm up again), keep everything else.
            d = {**d, "version": STATE_VERSION, "cusums": {}, "windows": {}}
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"detector state version {d.get('version')!r} is not "
                             f"{STATE_VERSION}")  # fmt: skip
        return cls(
            seed=int(d["seed"]),
            gates={k: Gate.from_dict(v) for k, v in d["gates"].items()},
            sample_history={k: window_from(v, SAMPLE_HISTORY)
                            for k, v in d["sample_history"].items()},  # fmt: skip
            windows={k: window_from(v, STEP_WINDOW) for k, v in d["windows"].items()},
            cusums={k: Cusum.from_dict(v) for k, v in d["cusums"].items()},
            sustain={k: int(v) for k, v in d["sustain"].items()},
            forest=ForestState.from_dict(d["forest"]),
            rollout_step=d["rollout_step"],
            rollout_metrics={k: _dec(v) for k, v in d["rollout_metrics"].items()},
        )
