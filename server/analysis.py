"""The seam between ingest and the detectors/policy (DESIGN §4).

`analyse` runs inside the ingest transaction, with the run row locked: it loads the run's
bounded detector and policy state, evaluates the report, lets the policy decide, applies the
automation mode, and writes the state back. The same function drives live ingest and
`rlkeel backtest`, so a replay gives what the live run gave.

State is cached in-process by (run, version) (`StateCache`): the stored version is read under
the run lock and the cache is used only when it matches, so several server processes on one
database never act on stale state; a mismatch reloads the blob from the database.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.orm import Session

from rlkeel.client.schemas import Algorithm, Phase, StepReport
from rlkeel.server import state_parts
from rlkeel.server.api.errors import ServiceUnavailable
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
    saved: state_parts.Saved | None = field(default=None, compare=False, repr=False)
    """What the database holds of this state's stored parts (not itself stored)."""

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """Plain data; `samples=False` leaves out the sample history and forest rows."""
        pending = self.pending_fit.to_dict(rows=samples) if self.pending_fit else None
        return {"detectors": self.detectors.to_dict(samples=samples),
                "policy": self.policy.to_dict(), "rollouts": self.rollouts,
                "pending_fit": pending}  # fmt: skip

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
    """Recently used runs' states, each valid only for the stored version it was saved as.

    Several server processes share one database, each with its own cache, so an entry is
    only a shortcut for "decode the blob of this version": `take` hands it out only when the
    stored version (read under the run lock) matches, and removes it, because the caller
    mutates the state; `put` happens only after the transaction that stored that version
    committed (`save_state` arranges it). A rolled-back or failed transaction therefore
    never leaves a state in the cache that the database does not hold.
    """

    def __init__(self, max_runs: int = 512) -> None:
        self.max_runs = max_runs
        self._items: OrderedDict[str, tuple[int, RunAnalysisState]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: str, version: int) -> RunAnalysisState | None:
        with self._lock:
            item = self._items.pop(run_id, None)
        return item[1] if item is not None and item[0] == version else None

    def put(self, run_id: str, version: int, state: RunAnalysisState) -> None:
        with self._lock:
            self._items[run_id] = (version, state)
            self._items.move_to_end(run_id)
            while len(self._items) > self.max_runs:
                self._items.popitem(last=False)

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._items.pop(run_id, None)


@dataclass(frozen=True)
class Prefetched:
    """What ingest read for analysis in its one look-up after taking the run lock."""

    version: int | None
    """The stored state's version (None: no state stored yet)."""
    any_snoozed: bool
    """Whether any finding of the run is snoozed now (only then are they read)."""


def load_state(
    session: Session, run_id: str, cache: StateCache | None, *, version: int | None | object = ...
) -> tuple[RunAnalysisState, int | None]:
    """The run's state and its stored version (None: none stored yet). Call with the run row
    locked; pass `version` when it was read already (after the lock). A cache hit reads
    only the version, not the blob."""
    if version is ...:
        version = session.scalar(
            select(DetectorState.version).where(DetectorState.run_id == run_id)
        )
    if version is None:
        return RunAnalysisState.new(), None
    assert isinstance(version, int)
    cached = cache.take(run_id, version) if cache is not None else None
    if cached is not None:
        return cached, version
    row = session.execute(
        select(DetectorState.blob, DetectorState.memory, DetectorState.fit).where(
            DetectorState.run_id == run_id
        )
    ).one()
    d, from_parts = state_parts.decode(row.blob, row.memory, row.fit)
    state = RunAnalysisState.from_dict(d)
    if from_parts:  # what the database holds: the parts as loaded
        state.saved = state_parts.Saved(memory=state.detectors.samples_changed,
                                        fit=state_parts.fit_key(state))  # fmt: skip
    return state, version


class StaleState(ServiceUnavailable):
    """The stored state moved under us (it cannot while the run row is locked): retry."""


def save_state(
    session: Session, run_id: str, state: RunAnalysisState, version: int | None,
    cache: StateCache | None,
) -> None:  # fmt: skip
    """Store the state as version + 1, if the stored version is still `version`; cache it
    once the transaction commits. Only the parts that changed are written."""
    parts = state_parts.encode(state, state.saved if version is not None else None)
    written = {name: data for name, data in
               (("blob", parts.blob), ("memory", parts.memory), ("fit", parts.fit))
               if data is not None}  # fmt: skip
    values: dict[str, Any] = {"state_run": run_id, "now": utcnow(),
                              **{f"new_{name}": data for name, data in written.items()}}  # fmt: skip
    # Core statements on the session's connection: the ORM's bulk-DML path costs ~1 ms here.
    statement = _state_statement(version is None, tuple(written))
    connection = session.connection()
    if version is None:
        connection.execute(statement, values)
        new_version = 1
    else:
        new_version = version + 1
        done = connection.execute(statement, {**values, "old_version": version,
                                              "new_version": new_version})  # fmt: skip
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleState(f"detector state of run {run_id} changed concurrently; retry")

    def committed() -> None:
        state.saved = parts.saved
        if cache is not None:
            cache.put(run_id, new_version, state)

    _after_commit(session, committed)


@functools.cache
def _state_statement(first: bool, parts: tuple[str, ...]) -> Any:
    """The INSERT (first save) or version-checked UPDATE that writes `parts` (of blob, memory,
    fit), built once per shape: building it on every report cost about as much as running it."""
    table = DetectorState.__table__
    values = {part: bindparam(f"new_{part}") for part in parts}
    values["updated_at"] = bindparam("now")
    if first:
        return insert(table).values(run_id=bindparam("state_run"), version=1, **values)
    return (
        update(table)
        .where(
            table.c.run_id == bindparam("state_run"), table.c.version == bindparam("old_version")
        )
        .values(version=bindparam("new_version"), **values)
    )


def _after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once this session's transaction commits; forget it on rollback."""
    pending: list[Callable[[], None]] = session.info.setdefault(_PENDING, [])
    if not pending and not session.info.get(_HOOKED):
        session.info[_HOOKED] = True

        def commit(s: Session) -> None:
            for act in s.info.pop(_PENDING, []):
                act()

        event.listen(session, "after_commit", commit)
        event.listen(session, "after_rollback", lambda s: s.info.pop(_PENDING, None))
    pending.append(action)


_PENDING, _HOOKED = "rlkeel.after_commit", "rlkeel.after_commit.hooked"


def _snoozed_now(run_id: Any, now: Any) -> Any:
    return (FindingRecord.run_id == run_id, FindingRecord.status == "snoozed",
            FindingRecord.snoozed_until > now)  # fmt: skip


def snoozed_detectors(session: Session, run_id: str) -> set[str]:
    return set(session.scalars(
        select(FindingRecord.detector).where(*_snoozed_now(run_id, utcnow()))
    ))  # fmt: skip


def prefetch_columns(run_id: Any, now: Any) -> tuple[Any, Any]:
    """Scalar subqueries for `Prefetched` (state version, snoozed-finding count), to read in
    the same statement as other look-ups; `run_id` and `now` may be bind parameters."""
    version = select(DetectorState.version).where(DetectorState.run_id == run_id)
    snoozed = select(func.count()).select_from(FindingRecord).where(*_snoozed_now(run_id, now))
    return version.scalar_subquery(), snoozed.scalar_subquery()


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
    metrics = dict(report.metrics)
    if report.phase is Phase.update and state.detectors.rollout_step == report.step:
        metrics = {**state.detectors.rollout_metrics, **metrics}
    sample_info = ({s.sample_id: (s.advantage, s.length) for s in report.samples}
                   if flags else None)  # fmt: skip
    decision = decide(state.policy, info, report.step, report.phase, found, flags, policy,
                      batch_size=len(report.samples), metrics=metrics, samples=sample_info)  # fmt: skip
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
    result.weights = decision.weights
    result.commands = [NewCommand(kind=c.kind.value, params=dict(c.params), reason_text=c.reason_text,
                                  finding_indexes=list(c.finding_indexes))
                       for c in decision.commands]  # fmt: skip
    return result


def analyse(
    session: Session, run: Run, report: StepReport, *, cache: StateCache | None = None,
    prefetched: Prefetched | None = None,
    while_evaluating: contextlib.AbstractContextManager[Any] | None = None,
) -> Analysis:  # fmt: skip
    """Load the run's state, evaluate the report, save the state. `while_evaluating` wraps the
    evaluation, which uses no database (ingest writes the samples meanwhile)."""
    if prefetched is None:
        state, version = load_state(session, run.id, cache)
        muted = snoozed_detectors(session, run.id)
    else:
        state, version = load_state(session, run.id, cache, version=prefetched.version)
        muted = snoozed_detectors(session, run.id) if prefetched.any_snoozed else set()
    policy = effective_policy(run)
    with while_evaluating or contextlib.nullcontext():
        result = evaluate(state, run, report, policy, muted=muted)
    save_state(session, run.id, state, version, cache)
    return result
