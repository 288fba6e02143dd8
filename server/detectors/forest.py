"""Multivariate per-sample outliers: an IsolationForest over recent samples' features.

The forest is refit by `refit_isolation_forest(state, cfg)`, which the service calls off the
request path when `forest_refit_due` says so; the request path only scores with the last
fitted model. Persistence stores the *training rows and the seed*, not a pickle: the same rows
and seed give the same trees (scikit-learn is deterministic given `random_state`), the stored
state stays plain JSON and is portable across scikit-learn versions. Fitted models are cached
in-process by a digest of (rows, seed), so reloading state per request costs no refit; after a
server restart the first load refits once (≈0.5–1 s, max_samples 1024) and gets the identical model.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.ensemble import IsolationForest

from rlkeel.client.schemas import SampleStats

if TYPE_CHECKING:
    from rlkeel.server.detectors.samples import SampleColumns
    from rlkeel.server.detectors.state import RunDetectorState
    from rlkeel.server.policy.config import PolicyConfig

__all__ = ["FEATURES", "ForestState", "forest_refit_due", "refit_isolation_forest",
           "sample_features"]  # fmt: skip

FEATURES = ("log_length", "abs_advantage", "kl", "log_ratio_max", "entropy", "repetition",
            "truncated")  # fmt: skip
RESERVOIR = 1024  # recent feature rows kept for the next refit
ROWS_PER_REPORT = 128  # rows a report adds to the reservoir (evenly spaced), so it spans reports
_CACHE: OrderedDict[str, CompiledForest] = OrderedDict()
_CACHE_SIZE = 256
_CACHE_LOCK = threading.Lock()


def sample_features(s: SampleStats) -> list[float] | None:
    """Feature row of a sample, or None when a number in it is not finite."""
    row = [math.log1p(s.length), abs(s.advantage), s.kl or 0.0, s.log_ratio_max or 0.0,
           s.entropy or 0.0, s.repetition or 0.0, 1.0 if s.truncated else 0.0]  # fmt: skip
    return row if all(math.isfinite(v) for v in row) else None


@dataclass
class ForestState:
    rows: deque[list[float]] = field(default_factory=lambda: deque(maxlen=RESERVOIR))
    fit_rows: list[list[float]] = field(default_factory=list)
    fit_seed: int = 0
    fit_count: int = 0
    fit_n_estimators: int = 100
    reports_since_fit: int = 0
    key: str | None = None
    model: CompiledForest | None = None

    def to_dict(self, *, rows: bool = True) -> dict[str, Any]:
        """`rows=False` leaves out `rows` and `fit_rows` (stored apart)."""
        d: dict[str, Any] = {"fit_seed": self.fit_seed, "fit_count": self.fit_count,
             "fit_n_estimators": self.fit_n_estimators,
             "reports_since_fit": self.reports_since_fit, "key": self.key}  # fmt: skip
        if rows:
            d["rows"], d["fit_rows"] = [list(r) for r in self.rows], self.fit_rows
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForestState:
        st = cls(rows=deque(([float(v) for v in r] for r in d["rows"]), maxlen=RESERVOIR),
                 fit_rows=[[float(v) for v in r] for r in d["fit_rows"]],
                 fit_seed=int(d["fit_seed"]), fit_count=int(d["fit_count"]),
                 fit_n_estimators=int(d["fit_n_estimators"]),
                 reports_since_fit=int(d["reports_since_fit"]), key=d["key"])  # fmt: skip
        if st.key is not None:
            st.model = _CACHE.get(st.key) or _fit(
                st.fit_rows, st.fit_seed, st.fit_n_estimators, st.key
            )
        return st


def _digest(rows: list[list[float]], seed: int, n_estimators: int) -> str:
    h = hashlib.sha256(np.asarray(rows, dtype=np.float64).tobytes())
    h.update(f"{seed}:{n_estimators}:{len(rows)}".encode())
    return h.hexdigest()


def fit_forest(rows: list[list[float]], seed: int, n_estimators: int) -> CompiledForest:
    """Fit the IsolationForest of (rows, seed) and compile it for scoring (pure, ~0.3 s)."""
    model = IsolationForest(n_estimators=n_estimators, max_samples=min(1024, len(rows)),
                            random_state=seed, n_jobs=1)  # fmt: skip
    model.fit(np.asarray(rows, dtype=np.float64))
    return CompiledForest.from_model(model)


def cache_model(key: str, model: CompiledForest) -> None:
    with _CACHE_LOCK:  # request threads and the refit callback thread both write
        _CACHE[key] = model
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _fit(rows: list[list[float]], seed: int, n_estimators: int, key: str) -> CompiledForest:
    model = fit_forest(rows, seed, n_estimators)
    cache_model(key, model)
    return model


def feature_matrix(cols: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
    """`sample_features` of every sample at once: (rows, index of each row's sample); samples
    with a non-finite number in their row are left out."""
    x = np.column_stack([
        np.log1p(cols.length), np.abs(cols.advantage),
        np.where(cols.has_kl, cols.kl, 0.0), np.where(cols.has_log_ratio_max, cols.log_ratio_max, 0.0),
        np.where(cols.has_entropy, cols.entropy, 0.0), np.where(cols.has_repetition, cols.repetition, 0.0),
        cols.truncated.astype(np.float64),
    ])  # fmt: skip
    where = np.flatnonzero(np.isfinite(x).all(axis=1))
    return x[where], where


def add_rows(forest: ForestState, rows: list[list[float]] | np.ndarray) -> None:
    if len(rows) > ROWS_PER_REPORT:
        idx = np.linspace(0, len(rows) - 1, ROWS_PER_REPORT).round().astype(int)
        rows = rows[idx] if isinstance(rows, np.ndarray) else [rows[i] for i in idx]
    forest.rows.extend(rows.tolist() if isinstance(rows, np.ndarray) else rows)
    forest.reports_since_fit += 1


def forest_refit_due(state: RunDetectorState, cfg: PolicyConfig) -> bool:
    """True when the reservoir holds enough rows and enough reports came since the last fit."""
    s = cfg.detector("sample_isolation_forest")
    if not s.enabled or len(state.forest.rows) < int(s.params["min_rows"]):
        return False
    return state.forest.model is None or state.forest.reports_since_fit >= int(
        s.params["refit_every"]
    )


def refit_isolation_forest(state: RunDetectorState, cfg: PolicyConfig | None = None) -> bool:
    """Fit a new forest on the reservoir (off the request path). Returns whether it fitted."""
    from rlkeel.server.policy.config import DEFAULT_POLICY

    cfg = cfg or DEFAULT_POLICY
    s = cfg.detector("sample_isolation_forest")
    f = state.forest
    if len(f.rows) < max(16, int(s.params["min_rows"])):
        return False
    n_est = int(s.params["n_estimators"])
    rows = [list(r) for r in f.rows]
    seed = (state.seed + f.fit_count) % (2**31)
    key = _digest(rows, seed, n_est)
    f.model = _fit(rows, seed, n_est, key)
    f.fit_rows, f.fit_seed, f.fit_n_estimators, f.key = rows, seed, n_est, key
    f.fit_count += 1
    f.reports_since_fit = 0
    return True


def anomaly_scores(forest: ForestState, rows: list[list[float]] | np.ndarray) -> np.ndarray | None:
    """Anomaly score per row (0.5 ≈ normal, → 1 anomalous), or None before the first fit."""
    if forest.model is None or len(rows) == 0:
        return None
    return forest.model.scores(np.asarray(rows, dtype=np.float64))


@dataclass(frozen=True)
class CompiledForest:
    """A fitted IsolationForest reduced to what scoring needs, scored on several cores.

    scikit-learn's `score_samples` walks each tree (`Tree.apply`, C code that releases the
    GIL), then does a few numpy passes per tree over the leaves. Here the walks are split
    across a small thread pool (`SCORING_THREADS`), and the per-leaf path lengths of all trees
    are looked up in one pass. The arithmetic is scikit-learn's own (`_compute_score_samples`):
    the same float32 inputs through the same trees, per-tree path lengths added in tree order,
    the same denominator. Scores are bit-identical (pinned by a test).
    """

    trees: tuple[Any, ...]
    """scikit-learn `Tree` objects, in the forest's order."""
    columns: tuple[np.ndarray | None, ...]
    """Per tree, the input columns it was fitted on (None: all, in order)."""
    path_length: np.ndarray
    """All trees' nodes, tree after tree: depth + average path length below it − 1."""
    offsets: np.ndarray
    """Per tree, the index of its node 0 in `path_length` (shape: trees × 1)."""
    denominator: np.ndarray
    n_features: int

    @classmethod
    def from_model(cls, model: IsolationForest) -> CompiledForest:
        from sklearn.ensemble._iforest import _average_path_length

        n_features = int(model.n_features_in_)
        trees, columns, lengths, offsets, offset = [], [], [], [], 0
        for tree, cols, d, a in zip(model.estimators_, model.estimators_features_,
                                    model._decision_path_lengths,
                                    model._average_path_length_per_tree, strict=True):  # fmt: skip
            cols = np.asarray(cols, dtype=np.intp)
            trees.append(tree.tree_)
            columns.append(None if np.array_equal(cols, np.arange(n_features)) else cols)
            lengths.append(d + a - 1.0)
            offsets.append(offset)
            offset += tree.tree_.node_count
        denominator = len(model.estimators_) * _average_path_length([model.max_samples_])
        return cls(trees=tuple(trees), columns=tuple(columns),
                   path_length=np.concatenate(lengths).astype(np.float64),
                   offsets=np.asarray(offsets, dtype=np.intp)[:, None],
                   denominator=np.asarray(denominator, dtype=np.float64),
                   n_features=n_features)  # fmt: skip

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per row of x: `-score_samples(x)` of the source model."""
        n, n_trees = x.shape[0], len(self.trees)
        # scikit-learn's trees compare float32 inputs with their float64 thresholds.
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        leaves = np.empty((n_trees, n), dtype=np.intp)

        def walk(first: int, last: int) -> None:
            for i in range(first, last):
                cols = self.columns[i]
                leaves[i] = self.trees[i].apply(
                    x32 if cols is None else np.ascontiguousarray(x32[:, cols])
                )

        first, *others = _scoring_parts(n, n_trees)
        helpers = [_scoring_pool().submit(walk, *part) for part in others]
        walk(*first)
        for done in helpers:
            done.result()
        leaves += self.offsets
        per_tree = self.path_length.take(leaves)
        depths = np.zeros(n, dtype=np.float64)
        for lengths in per_tree:  # tree order, as scikit-learn adds
            depths += lengths
        return np.asarray(2.0 ** (-depths / self.denominator), dtype=np.float64)


SCORING_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that walk a forest's trees for one report (the request's own thread included)."""
_PARALLEL_MIN_ROWS = 128  # below this, handing trees to another thread costs more than it saves
_POOL: list[ThreadPoolExecutor] = []


def _scoring_parts(n_rows: int, n_trees: int) -> list[tuple[int, int]]:
    k = SCORING_THREADS if n_rows >= _PARALLEL_MIN_ROWS else 1
    k = max(1, min(k, n_trees))
    bounds = [round(i * n_trees / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i] < bounds[i + 1]]


def _scoring_pool() -> ThreadPoolExecutor:
    with _CACHE_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=SCORING_THREADS - 1,
                                            thread_name_prefix="rlkeel-forest-score"))  # fmt: skip
        return _POOL[0]


def fast_anomaly_scores(model: IsolationForest, x: np.ndarray) -> np.ndarray:
    """`-model.score_samples(x)`, through `CompiledForest` (bit-identical)."""
    return CompiledForest.from_model(model).scores(np.asarray(x, dtype=np.float64))
