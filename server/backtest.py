"""Replay a stored run through the same detectors and policy (`rlkeel backtest`).

The stored reports are rebuilt in the order they were received for each step (rollout, then
update) and evaluated by `analysis.evaluate` — the function live ingest calls — from a fresh
state. Forest refits are done synchronously at their snapshot: the model that scores each
report is the same as live (see `forest_refits`). Snoozes set by operators during the live
run are not replayed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlkeel.client.schemas import SampleStats, StepReport
from rlkeel.server.analysis import RunAnalysisState, evaluate
from rlkeel.server.db.models import CommandRecord, FindingRecord, Run, SampleRecord, StepRecord
from rlkeel.server.forest_refits import fit_into_cache
from rlkeel.server.policy import PolicyConfig
from rlkeel.server.runs.policy import effective_policy
from rlkeel.server.steps.store import step_to_schema
from rlkeel.server.steps.values import overlay


@dataclass(frozen=True)
class FindingKey:
    step: int
    phase: str
    detector: str
    severity: str
    sample_ids: tuple[str, ...]


@dataclass(frozen=True)
class CommandKey:
    step: int
    phase: str
    kind: str
    params: str


@dataclass
class BacktestResult:
    findings: list[FindingKey] = field(default_factory=list)
    commands: list[CommandKey] = field(default_factory=list)
    drops: int = 0
    skips: int = 0


def stored_reports(session: Session, run_id: str) -> Iterator[StepReport]:
    """The run's reports as received: by step, rollout before update."""
    steps = session.scalars(
        select(StepRecord).where(StepRecord.run_id == run_id)
        .order_by(StepRecord.step, StepRecord.phase)  # "rollout" < "update"
    )  # fmt: skip
    for record in steps:
        read = step_to_schema(record)
        samples: list[SampleStats] = []
        if record.phase == "rollout" and record.sample_count:
            rows = session.scalars(
                select(SampleRecord)
                .where(SampleRecord.run_id == run_id, SampleRecord.step == record.step)
                .order_by(SampleRecord.id)
            )
            for r in rows:
                values: dict[str, float | None] = {
                    "reward": r.reward, "advantage": r.advantage, "kl": r.kl,
                    "log_ratio_max": r.log_ratio_max, "entropy": r.entropy,
                    "repetition": r.repetition,
                }  # fmt: skip
                overlay(values, r.nonfinite or {})
                samples.append(SampleStats(sample_id=r.sample_id, group_id=r.group_id,
                                           length=r.length, truncated=r.truncated,
                                           extra=r.extra or {}, **values))  # type: ignore[arg-type]  # fmt: skip
        yield StepReport(step=read.step, phase=read.phase, algorithm=read.algorithm,
                         metrics=read.metrics, samples=samples)  # fmt: skip


def replay(session: Session, run: Run, policy: PolicyConfig) -> BacktestResult:
    state = RunAnalysisState.new()
    out = BacktestResult()
    for report in stored_reports(session, run.id):
        result = evaluate(state, run, report, policy)
        if result.refit is not None:
            fit_into_cache(result.refit)
        phase = report.phase.value
        out.findings += [FindingKey(report.step, phase, f.detector, f.severity, tuple(f.sample_ids))
                         for f in result.findings]  # fmt: skip
        out.commands += [CommandKey(report.step, phase, c.kind, json.dumps(c.params, sort_keys=True))
                         for c in result.commands]  # fmt: skip
        out.drops += len(result.drop)
        out.skips += int(result.skip_step)
    return out


def live(session: Session, run_id: str) -> BacktestResult:
    """What the live run stored: its findings and its policy's commands."""
    out = BacktestResult()
    for f in session.scalars(select(FindingRecord).where(FindingRecord.run_id == run_id)
                             .order_by(FindingRecord.id)):  # fmt: skip
        out.findings.append(
            FindingKey(f.step, f.phase, f.detector, f.severity, tuple(f.sample_ids or []))
        )
    for c in session.scalars(select(CommandRecord).where(CommandRecord.run_id == run_id,
                                                         CommandRecord.origin == "policy")
                             .order_by(CommandRecord.id)):  # fmt: skip
        reason: dict[str, Any] = c.reason or {}
        out.commands.append(CommandKey(int(reason.get("step", -1)), str(reason.get("phase", "")),
                                       c.kind, json.dumps(c.params, sort_keys=True)))  # fmt: skip
    return out


def run_policy(run: Run, override: dict[str, Any] | None) -> PolicyConfig:
    return PolicyConfig.model_validate(override) if override is not None else effective_policy(run)
