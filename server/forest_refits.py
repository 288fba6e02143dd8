"""IsolationForest refits off the request path, yet deterministic.

When a rollout report makes a refit due, the request only *snapshots* the reservoir (rows and
seed) into the run's state and hands the fit to a background worker. The new model takes
over `ACTIVATION_DELAY` rollout reports later: by then the worker has long finished (a fit
is ~0.1 s, a report ~1 s apart) and the model is taken from the cache; if it somehow has not,
that request fits it itself, and says so in the log. Which model scores which report thus
depends only on the reports, never on timing: a restarted server and `rlkeel backtest` make
exactly the same decisions as the live run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlkeel.server.detectors import RunDetectorState, forest_refit_due
from rlkeel.server.detectors import forest as forest_mod
from rlkeel.server.policy import PolicyConfig

log = logging.getLogger("rlkeel.server.forest")

ACTIVATION_DELAY = 3
"""Rollout reports between the snapshot of a refit and the moment its model takes over."""


@dataclass
class PendingFit:
    rows: list[list[float]]
    seed: int
    n_estimators: int
    activate_at: int
    """The rollout-report count at which the model takes over."""

    @property
    def key(self) -> str:
        return forest_mod._digest(self.rows, self.seed, self.n_estimators)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "seed": self.seed, "n_estimators": self.n_estimators,
                "activate_at": self.activate_at}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingFit:
        return cls(rows=[[float(v) for v in r] for r in d["rows"]], seed=int(d["seed"]),
                   n_estimators=int(d["n_estimators"]), activate_at=int(d["activate_at"]))  # fmt: skip


def fit_into_cache(job: PendingFit) -> None:
    """The background half: fit and cache by digest (idempotent)."""
    key = job.key
    if key not in forest_mod._CACHE:
        forest_mod._fit(job.rows, job.seed, job.n_estimators, key)


def activate_if_due(
    detectors: RunDetectorState, pending: PendingFit | None, rollouts: int
) -> PendingFit | None:
    """Before scoring a rollout report: switch to the pending model when its time has come."""
    if pending is None or rollouts < pending.activate_at:
        return pending
    key = pending.key
    model = forest_mod._CACHE.get(key)
    if model is None:
        log.warning("forest refit was not ready at activation; fitting on the request path")
        model = forest_mod._fit(pending.rows, pending.seed, pending.n_estimators, key)
    f = detectors.forest
    f.model, f.key = model, key
    f.fit_rows, f.fit_seed, f.fit_n_estimators = pending.rows, pending.seed, pending.n_estimators
    f.fit_count += 1
    return None


def snapshot_if_due(
    detectors: RunDetectorState, pending: PendingFit | None, rollouts: int, cfg: PolicyConfig
) -> PendingFit | None:
    """After a rollout report: snapshot the reservoir for a refit when one is due."""
    if pending is not None or not forest_refit_due(detectors, cfg):
        return pending
    f = detectors.forest
    n_estimators = int(cfg.detector("sample_isolation_forest").params["n_estimators"])
    f.reports_since_fit = 0
    return PendingFit(rows=[list(r) for r in f.rows], seed=(detectors.seed + f.fit_count) % (2**31),
                      n_estimators=n_estimators, activate_at=rollouts + ACTIVATION_DELAY)  # fmt: skip


class Refitter:
    """One background thread per server process that fits forests."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkeel-forest")

    def submit(self, job: PendingFit) -> None:
        self._pool.submit(_safe_fit, job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _safe_fit(job: PendingFit) -> None:
    try:
        fit_into_cache(job)
    except Exception:  # noqa: BLE001 - the request path fits it itself if this failed
        log.exception("background forest refit failed")
