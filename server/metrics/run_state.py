"""Gauges read from the database at scrape time: runs, their latest training metrics, the
webhook outbox.

Only runs whose status is `running` get `run`-labelled series, so a run's series disappear at
the first scrape after it stops, finishes or fails — whichever process or endpoint changed its
status. Reading the store (not in-process memory) keeps the figures right after a restart and
the same from every server process. The cost is a handful of indexed queries per scrape,
bounded by the number of running runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from rlkeel.client.schemas import RunStatus
from rlkeel.server.db.models import CommandRecord, Run, StepRecord, WebhookDelivery

log = logging.getLogger("rlkeel.server.metrics")


@dataclass(frozen=True)
class RunGauge:
    source: str
    """A canonical step metric, or `dropped` (computed from the verdict)."""
    name: str
    help: str


RUN_GAUGES: tuple[RunGauge, ...] = (
    RunGauge("reward_mean", "rlkeel_run_reward_mean", "Mean reward of the latest report."),
    RunGauge("kl_mean", "rlkeel_run_kl_mean", "Mean per-token KL to the reference."),
    RunGauge("entropy_mean", "rlkeel_run_entropy_mean", "Mean per-token policy entropy."),
    RunGauge("length_mean", "rlkeel_run_response_length_mean_tokens",
             "Mean response length."),
    RunGauge("truncation_rate", "rlkeel_run_truncated_ratio",
             "Share of responses truncated at the length limit."),
    RunGauge("clip_frac", "rlkeel_run_clip_ratio", "Share of tokens whose ratio was clipped."),
    RunGauge("grad_norm", "rlkeel_run_grad_norm", "Gradient norm of the latest update."),
    RunGauge("positive_frac", "rlkeel_run_positive_ratio",
             "Share of samples with a positive reward."),
    RunGauge("dropped", "rlkeel_run_dropped_ratio",
             "Share of the latest rollout's samples dropped by the verdict."),
    RunGauge("zero_std_group_frac", "rlkeel_run_zero_std_groups_ratio",
             "Share of prompt groups whose rewards are all equal."),
    RunGauge("loss", "rlkeel_run_loss", "Loss of the latest update."),
    RunGauge("lr", "rlkeel_run_learning_rate", "Learning rate in force."),
    RunGauge("step_time_s", "rlkeel_run_step_duration_seconds", "Duration of the latest step."),
    RunGauge("tokens_per_s", "rlkeel_run_tokens_per_second", "Trainer throughput."),
)  # fmt: skip

_STEP_COLUMNS = sorted({g.source for g in RUN_GAUGES} - {"dropped"} | {"dropped_frac"})


@dataclass
class RunningRun:
    id: str
    name: str
    project: str
    algorithm: str
    automation: str
    last_step: int | None
    last_seen: float
    """Unix time of the last report (of registration while there is none)."""
    latest: dict[str, float] = field(default_factory=dict)
    held_commands: int = 0


@dataclass
class RunState:
    runs_by_status: dict[str, int]
    running: list[RunningRun]
    outbox_pending: int


@dataclass(frozen=True)
class StepRow:
    step: int
    phase: str
    sample_count: int
    dropped: int
    values: dict[str, float | None]


def latest_values(rows: Iterable[StepRow]) -> dict[str, float]:
    """Each gauge's newest value over a run's last step rows (an update is newer than the
    rollout of its step). The dropped share is the service's own verdict; a trainer-reported
    `dropped_frac` only stands in when no rollout row is at hand."""
    ordered = sorted(rows, key=lambda r: (r.step, r.phase == "update"), reverse=True)
    out: dict[str, float] = {}
    for gauge in RUN_GAUGES:
        if gauge.source == "dropped":
            rollout = next((r for r in ordered if r.phase == "rollout" and r.sample_count), None)
            if rollout is not None:
                out["dropped"] = rollout.dropped / rollout.sample_count
            continue
        for row in ordered:
            value = row.values.get(gauge.source)
            if value is not None:
                out[gauge.source] = value
                break
    if "dropped" not in out:
        reported = next((v for r in ordered if (v := r.values.get("dropped_frac")) is not None),
                        None)  # fmt: skip
        if reported is not None:
            out["dropped"] = reported
    return out


def read_run_state(session: Session) -> RunState:
    by_status = {s.value: 0 for s in RunStatus}
    for status, count in session.execute(select(Run.status, func.count()).group_by(Run.status)):
        by_status[status] = int(count)
    running = [
        RunningRun(id=r.id, name=r.name, project=r.project, algorithm=r.current_algorithm,
                   automation=r.automation, last_step=r.last_step,
                   last_seen=(r.last_report_at or r.created_at).timestamp())
        for r in session.scalars(select(Run).where(Run.status == RunStatus.running.value))
    ]  # fmt: skip
    _fill_latest(session, running)
    _fill_held(session, running)
    pending = session.scalar(
        select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.status == "pending")
    )
    return RunState(runs_by_status=by_status, running=running, outbox_pending=int(pending or 0))


def _fill_latest(session: Session, running: Sequence[RunningRun]) -> None:
    # The last step (both phases) and the update before it: at most four rows per run, each
    # found through the (run_id, step, phase) unique index.
    wanted = [
        and_(StepRecord.run_id == r.id, StepRecord.step.in_([r.last_step, r.last_step - 1]))
        for r in running
        if r.last_step is not None
    ]
    if not wanted:
        return
    columns = [getattr(StepRecord, c) for c in _STEP_COLUMNS]
    stmt = select(
        StepRecord.run_id, StepRecord.step, StepRecord.phase, StepRecord.sample_count,
        StepRecord.verdict, StepRecord.nonfinite, *columns,
    ).where(or_(*wanted))  # fmt: skip
    rows: dict[str, list[StepRow]] = {}
    for rec in session.execute(stmt):
        nonfinite: dict[str, str] = rec.nonfinite or {}
        values: dict[str, float | None] = {}
        for name in _STEP_COLUMNS:
            label = nonfinite.get(name)
            values[name] = float(label) if label is not None else getattr(rec, name)
        verdict: dict[str, Any] = rec.verdict or {}
        rows.setdefault(rec.run_id, []).append(
            StepRow(step=rec.step, phase=rec.phase, sample_count=rec.sample_count,
                    dropped=len(verdict.get("drop") or ()), values=values)
        )  # fmt: skip
    for run in running:
        run.latest = latest_values(rows.get(run.id, ()))


def _fill_held(session: Session, running: Sequence[RunningRun]) -> None:
    if not running:
        return
    by_id = {r.id: r for r in running}
    stmt = (
        select(CommandRecord.run_id, func.count())
        .where(CommandRecord.run_id.in_(list(by_id)), CommandRecord.status == "held")
        .group_by(CommandRecord.run_id)
    )
    for run_id, count in session.execute(stmt):
        by_id[run_id].held_commands = int(count)


def state_families(state: RunState | None) -> Iterator[Metric]:
    """The scrape-time metric families; `None` (the database did not answer) gives only
    `rlkeel_database_up 0`."""
    yield GaugeMetricFamily("rlkeel_database_up",
                            "1 when the database answered this scrape's queries, else 0.",
                            value=0 if state is None else 1)  # fmt: skip
    if state is None:
        return
    runs = GaugeMetricFamily("rlkeel_runs", "Runs by status.", labels=["status"])
    for status, count in sorted(state.runs_by_status.items()):
        runs.add_metric([status], count)
    yield runs
    yield GaugeMetricFamily(
        "rlkeel_webhook_outbox_pending_deliveries",
        "Webhook deliveries waiting for their first attempt or in back-off.",
        value=state.outbox_pending,
    )
    info = GaugeMetricFamily("rlkeel_run_info", "A running run (value 1) and its description.",
                             labels=["run", "name", "project", "algorithm", "automation"])  # fmt: skip
    last_seen = GaugeMetricFamily(
        "rlkeel_run_last_report_timestamp_seconds",
        "Unix time of a running run's last report (of its registration before the first).",
        labels=["run"],
    )
    last_step = GaugeMetricFamily("rlkeel_run_last_step", "Latest step a running run reported.",
                                  labels=["run"])  # fmt: skip
    held = GaugeMetricFamily("rlkeel_run_commands_held",
                             "Commands of a running run held for an operator's approval.",
                             labels=["run"])  # fmt: skip
    gauges = {g.source: GaugeMetricFamily(g.name, g.help, labels=["run"]) for g in RUN_GAUGES}
    for run in state.running:
        info.add_metric([run.id, run.name, run.project, run.algorithm, run.automation], 1)
        last_seen.add_metric([run.id], run.last_seen)
        held.add_metric([run.id], run.held_commands)
        if run.last_step is not None:
            last_step.add_metric([run.id], run.last_step)
        for source, value in run.latest.items():
            gauges[source].add_metric([run.id], value)
    yield from (info, last_seen, last_step, held)
    yield from gauges.values()


class RunStateCollector(Collector):
    """Reads `RunState` from the database on every scrape."""

    def __init__(
        self, session_factory: sessionmaker[Session], on_database_error: Callable[[], None]
    ) -> None:
        self._session_factory = session_factory
        self._on_database_error = on_database_error

    def describe(self) -> Iterable[Metric]:
        # Declared so that registering the collector does not query the database.
        return list(state_families(RunState({}, [], 0)))

    def collect(self) -> Iterable[Metric]:
        try:
            with self._session_factory() as session:
                state: RunState | None = read_run_state(session)
        except SQLAlchemyError as exc:
            log.warning("metrics scrape: the database did not answer: %s", type(exc).__name__)
            self._on_database_error()
            state = None
        return list(state_families(state))
