"""The seam between ingest and the detectors/policy (DESIGN §4).

`analyse` runs inside the ingest transaction, with the run row locked: it loads the run's
bounded detector and policy state, evaluates the report, lets the policy decide, applies the
automation mode, and writes the state back. The same function drives live ingest and
`rlkeel backtest`, so a replay gives what the live run gave.

State is cached in-process by (run, version): the row's version is read under the run lock,
so two server processes never act on stale state; a mismatch reloads from the database.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlkeel.client.schemas import Algorithm, Phase, StepReport
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import DetectorState, FindingRecord, Run
from rlkeel.server.detectors import (
    RunDetectorState,
    evaluate_rollout,
    evaluate_update,
)
from rlkeel.server.forest_refits import PendingFit, activate_if_due, snapshot_if_due
from rlkeel.server.policy import PolicyConfig, PolicyState, RunInfo, decide
from rlkeel.server.runs.policy import effective_policy


@dataclass
class NewFinding:
    detector: str
    severity: str
    metric: str | None
    value: float | None
    baseline: float | None
    threshold: float | None
    message: str
    sample_ids: list[str] = field(default_factory=list)


@dataclass
class NewCommand:
    kind: str
    params: dict[str, Any]
    reason_text: str
    finding_indexes: list[int] = field(default_factory=list)


@dataclass
class Analysis:
    drop: dict[str, list[str]] = field(default_factory=dict)
    """sample_id → reasons, for samples the verdict removes."""
    flags: dict[str, list[str]] = field(default_factory=dict)
    """sample_id → detector flags (dropped or not), stored with the sample."""
    skip_step: bool = False
    weights: dict[str, float] | None = None
    findings: list[NewFinding] = field(default_factory=list)
    commands: list[NewCommand] = field(default_factory=list)
    refit: PendingFit | None = None
    """A forest fit for the background worker, once this transaction commits."""


@dataclass
class RunAnalysisState:
    detectors: RunDetectorState
    policy: PolicyState
    rollouts: int = 0
    """Rollout reports evaluated: the clock of forest refits."""
    pending_fit: PendingFit | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"detectors": self.detectors.to_dict(), "policy": self.policy.to_dict(),
                "rollouts": self.rollouts,
                "pending_fit": self.pending_fit.to_dict() if self.pending_fit else None}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunAnalysisState:
        pending = d.get("pending_fit")
        return cls(RunDetectorState.from_dict(d["detectors"]), PolicyState.from_dict(d["policy"]),
                   rollouts=int(d.get("rollouts", 0)),
                   pending_fit=PendingFit.from_dict(pending) if pending else None)  # fmt: skip

    @classmethod
    def new(cls) -> RunAnalysisState:
        # One fixed seed: the same reports give the same forests, live, after a restart and in
        # a replay (`rlkeel backtest`), whatever the run's id.
        return cls(RunDetectorState(seed=0), PolicyState())


class StateCache:
    """Recently used runs' states, valid only while their stored version matches."""

    def __init__(self, max_runs: int = 512) -> None:
        self.max_runs = max_runs
        self._items: OrderedDict[str, tuple[int, RunAnalysisState]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, version: int) -> RunAnalysisState | None:
        with self._lock:
            item = self._items.get(run_id)
            if item is None or item[0] != version:
                return None
            self._items.move_to_end(run_id)
            return item[1]

    def put(self, run_id: str, version: int, state: RunAnalysisState) -> None:
        with self._lock:
            self._items[run_id] = (version, state)
            self._items.move_to_end(run_id)
            while len(self._items) > self.max_runs:
                self._items.popitem(last=False)

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._items.pop(run_id, None)


def load_state(
    session: Session, run_id: str, cache: StateCache | None
) -> tuple[RunAnalysisState, DetectorState | None]:
    row = session.get(DetectorState, run_id)
    if row is None:
        return RunAnalysisState.new(), None
    cached = cache.get(run_id, row.version) if cache is not None else None
    if cached is not None:
        return cached, row
    return RunAnalysisState.from_dict(pickle.loads(row.blob)), row  # noqa: S301 - our own rows


def save_state(
    session: Session, run_id: str, state: RunAnalysisState, row: DetectorState | None,
    cache: StateCache | None,
) -> None:  # fmt: skip
    data = pickle.dumps(state.to_dict(), protocol=5)
    if row is None:
        row = DetectorState(run_id=run_id, blob=data, version=1)
        session.add(row)
    else:
        row.blob = data
        row.version += 1
        row.updated_at = utcnow()
    if cache is not None:
        # Cached now, valid once this transaction commits; on rollback the version in the
        # database stays behind and the next load misses the cache and reloads.
        cache.put(run_id, row.version, state)


def snoozed_detectors(session: Session, run_id: str) -> set[str]:
    stmt = select(FindingRecord.detector).where(
        FindingRecord.run_id == run_id,
        FindingRecord.status == "snoozed",
        FindingRecord.snoozed_until > utcnow(),
    )
    return set(session.scalars(stmt))


def evaluate(
    state: RunAnalysisState, run: Run, report: StepReport, policy: PolicyConfig,
    *, muted: set[str] = frozenset(),  # type: ignore[assignment]
) -> Analysis:  # fmt: skip
    """Pure: the report through the detectors and the policy, and the automation mode."""
    refit: PendingFit | None = None
    if report.phase is Phase.rollout:
        state.pending_fit = activate_if_due(state.detectors, state.pending_fit, state.rollouts)
        evaluation = evaluate_rollout(state.detectors, report, policy)
        found, flags = evaluation.findings, evaluation.sample_flags
        state.rollouts += 1
        before = state.pending_fit
        state.pending_fit = snapshot_if_due(state.detectors, before, state.rollouts, policy)
        if state.pending_fit is not before:
            refit = state.pending_fit
    else:
        found, flags = evaluate_update(state.detectors, report, policy), {}
    if muted:
        found = [f for f in found if f.detector not in muted]
        flags = {
            sid: kept for sid, rs in flags.items() if (kept := [r for r in rs if r not in muted])
        }
    info = RunInfo(algorithm=Algorithm(report.algorithm), moe=run.model_moe,
                   verifiable_rewards=run.verifiable_rewards)  # fmt: skip
    decision = decide(state.policy, info, report.step, report.phase, found, flags, policy,
                      batch_size=len(report.samples))  # fmt: skip
    result = Analysis(
        flags={sid: list(rs) for sid, rs in flags.items()},
        findings=[NewFinding(detector=f.detector, severity=f.severity.value, metric=f.metric,
                             value=f.value, baseline=f.baseline, threshold=f.threshold,
                             message=f.message, sample_ids=list(f.sample_ids)) for f in found],
        refit=refit,
    )  # fmt: skip
    if run.automation == "observe":
        return result  # findings only: nothing dropped, skipped or commanded
    result.drop = {sid: list(reasons) for sid, reasons in decision.drop}
    result.skip_step = decision.skip_step
    result.commands = [NewCommand(kind=c.kind.value, params=dict(c.params), reason_text=c.reason_text,
                                  finding_indexes=list(c.finding_indexes))
                       for c in decision.commands]  # fmt: skip
    return result


def analyse(
    session: Session, run: Run, report: StepReport, *, cache: StateCache | None = None
) -> Analysis:
    state, row = load_state(session, run.id, cache)
    result = evaluate(state, run, report, effective_policy(run),
                      muted=snoozed_detectors(session, run.id))  # fmt: skip
    save_state(session, run.id, state, row, cache)
    return result
