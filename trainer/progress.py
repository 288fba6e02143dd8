"""Run output: step metrics as JSON lines, and a tqdm progress bar (rank 0 only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _finite_or_string(value: Any) -> Any:
    """JSON has no NaN/inf: write them as the strings "NaN", "Infinity", "-Infinity" (the wire
    contract's spelling, DESIGN §3), so a non-finite metric is data, not a broken line."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_or_string(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_string(v) for v in value]
    return value


def metrics_line(row: dict[str, Any]) -> str:
    return json.dumps(_finite_or_string(row), allow_nan=False, sort_keys=True)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; "NaN"/"Infinity" strings come back as floats."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({k: float(v) if v in ("NaN", "Infinity", "-Infinity") else v
                         for k, v in row.items()})  # fmt: skip
    return rows


class MetricsWriter:
    """Appends one JSON object per step to ``path``. The file is opened per line: a crash
    loses no step, and a trainer driven step by step holds no open handle."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(metrics_line(row) + "\n")

    def close(self) -> None:
        """Nothing held open; kept so callers can treat it like a file."""


class ProgressBar:
    """A tqdm bar over steps whose postfix shows reward, KL, entropy and length."""

    SHOWN = (("reward", "reward_mean"), ("kl", "kl_mean"), ("ent", "entropy_mean"),
             ("len", "length_mean"))  # fmt: skip

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, metrics: dict[str, float], step: int) -> None:
        if self._bar is None:
            return
        shown = {}
        for label, name in self.SHOWN:
            value = metrics.get(name)
            if value is None and name == "kl_mean":
                value = metrics.get("ppo_kl")
            if value is not None:
                shown[label] = f"{value:.3g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.n = step
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
