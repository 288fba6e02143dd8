"""The stored form of a run's analysis state: three parts, each rewritten only when it changed.

A report changes a little of the state (gates, windows, CUSUMs, policy counters) and leaves
most of it alone: the recent samples (metric history and forest reservoir, 4k + 7k floats)
change only on rollout reports, the forests' training rows (7k floats each) only at a refit.
Rewriting all ~180 kB on every report cost PostgreSQL ~3 ms. So the state is stored as

- `blob`: everything small (pickled plain data), written on every report;
- `memory`: the recent samples as raw float64 bytes, written after a report that changed them
  (`RunDetectorState.samples_changed` counts those);
- `fit`: the current and the pending forest's training rows, written when either forest
  changed (known from their digests, without encoding them).

Raw float64 bytes are exact, so a state read back equals the state written. A `blob` from
before the split (everything in it, no parts) is read as it is and split on its next write.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rlkeel.server.analysis import RunAnalysisState
    from rlkeel.server.detectors import RunDetectorState

__all__ = ["Encoded", "Saved", "decode", "encode", "fit_key"]

PARTS_FORMAT = 1


@dataclass(frozen=True)
class Saved:
    """What the stored parts hold, to tell whether they need writing again."""

    memory: int
    """`RunDetectorState.samples_changed` when the stored `memory` part was written."""
    fit: tuple[str | None, str | None]
    """`fit_key` of the stored `fit` part."""


@dataclass(frozen=True)
class Encoded:
    blob: bytes
    memory: bytes | None
    """None: unchanged since `Saved`, not to be written."""
    fit: bytes | None
    """None: unchanged since `Saved`, not to be written."""
    saved: Saved
    """What the parts hold once written."""


def fit_key(state: RunAnalysisState) -> tuple[str | None, str | None]:
    """Digests of the current forest's and the pending fit's (rows, seed, trees)."""
    pending = state.pending_fit
    return state.detectors.forest.key, pending.key if pending is not None else None


def encode(state: RunAnalysisState, saved: Saved | None) -> Encoded:
    """The parts to store; those `saved` says are stored already come back as None."""
    small = state.to_dict(samples=False)
    small["parts"] = PARTS_FORMAT
    blob = pickle.dumps(small, protocol=5)
    changed = state.detectors.samples_changed
    unchanged = saved is not None and saved.memory == changed
    memory = None if unchanged else _encode_memory(state.detectors)
    key = fit_key(state)
    fit = None if saved is not None and saved.fit == key else _encode_fit(state)
    return Encoded(blob=blob, memory=memory, fit=fit, saved=Saved(memory=changed, fit=key))


def decode(
    blob: bytes, memory: bytes | None, fit: bytes | None
) -> tuple[dict[str, Any], bool]:
    """(`RunAnalysisState.to_dict()` form, whether it came from parts); a blob from before the
    split holds everything itself."""
    d = pickle.loads(blob)  # noqa: S301 - our own rows
    if d.pop("parts", None) is None:
        return d, False
    if memory is None or fit is None:
        raise ValueError("detector state is split in parts but a part is missing")
    mem, fits = pickle.loads(memory), pickle.loads(fit)  # noqa: S301 - our own rows
    detectors = d["detectors"]
    detectors["sample_history"] = {k: np.frombuffer(v, dtype=np.float64).tolist()
                                   for k, v in mem["history"].items()}  # fmt: skip
    detectors["forest"]["rows"] = _rows(mem["rows"])
    detectors["forest"]["fit_rows"] = _rows(fits["fit_rows"])
    if d.get("pending_fit") is not None:
        d["pending_fit"]["rows"] = _rows(fits["pending_rows"])
    return d, True


def _encode_memory(detectors: RunDetectorState) -> bytes:
    history = {k: np.fromiter(v, dtype=np.float64, count=len(v)).tobytes()
               for k, v in sorted(detectors.sample_history.items())}  # fmt: skip
    return pickle.dumps({"history": history, "rows": _matrix(detectors.forest.rows)}, protocol=5)


def _encode_fit(state: RunAnalysisState) -> bytes:
    pending = state.pending_fit
    return pickle.dumps({"fit_rows": _matrix(state.detectors.forest.fit_rows),
                         "pending_rows": _matrix(pending.rows) if pending else None},
                        protocol=5)  # fmt: skip


def _matrix(rows: Iterable[Sequence[float]]) -> tuple[int, bytes]:
    """Rows of equal width as (width, float64 bytes, row after row)."""
    listed = list(rows)
    if not listed:
        return 0, b""
    array = np.array(listed, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError("feature rows must all have the same width")
    return array.shape[1], array.tobytes()


def _rows(matrix: tuple[int, bytes]) -> list[list[float]]:
    width, data = matrix
    if width == 0:
        return []
    return np.frombuffer(data, dtype=np.float64).reshape(-1, width).tolist()
