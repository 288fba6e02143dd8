"""Splitting numbers into what a column can hold and what must be remembered aside.

SQLite stores NaN as NULL and JSON cannot hold NaN or infinity at all; the `nonfinite` maps
keep the truth on every backend and readers overlay them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rlkeel.client.schemas import CANONICAL_STEP_METRICS

CANONICAL = frozenset(CANONICAL_STEP_METRICS)


def nonfinite_label(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return None


_FROM_LABEL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def from_label(label: str) -> float:
    return _FROM_LABEL[label]


def split_metrics(
    metrics: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, float | None], dict[str, str]]:
    """(canonical column values, extra JSON metrics, non-finite labels by name)."""
    columns: dict[str, float] = {}
    extra: dict[str, float | None] = {}
    nonfinite: dict[str, str] = {}
    for name, value in metrics.items():
        label = nonfinite_label(value)
        if label is not None:
            nonfinite[name] = label
        if name in CANONICAL:
            columns[name] = value
        else:
            extra[name] = None if label is not None else value
    return columns, extra, nonfinite


def overlay(
    values: dict[str, float | None], nonfinite: Mapping[str, str]
) -> dict[str, float | None]:
    for name, label in nonfinite.items():
        values[name] = from_label(label)
    return values
