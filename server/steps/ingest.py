"""Ingest of a StepReport: idempotent on (run, step, phase), one transaction, one verdict.

Order of work, all inside the request's transaction:
1. lock the run row (FOR UPDATE): reports of one run are analysed one at a time, also across
   server processes, so detector state and command issuing never race;
2. a stored report for (run, step, phase) answers with its stored verdict and writes nothing;
3. otherwise write the samples (one COPY, on a helper thread while the detectors run), analyse,
   store findings and commands, deliver due commands, store the step row (ON CONFLICT DO
   NOTHING as a second guard) and mark the flagged or dropped samples.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from rlkeel.client.schemas import DroppedSample, StepReport, Verdict
from rlkeel.server import analysis
from rlkeel.server.api.errors import Conflict, ValidationFailed
from rlkeel.server.commands import service as commands
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import FindingRecord, Run
from rlkeel.server.runs.service import get_run, record_report
from rlkeel.server.steps import store
from rlkeel.server.steps.values import nonfinite_label
from rlkeel.server.webhooks import service as webhooks


def _after_lock_lookup() -> Select[Any]:
    run_id, step = bindparam("run_id"), bindparam("step")
    version, snoozed = analysis.prefetch_columns(run_id, bindparam("now"))
    return select(store.stored_verdict(run_id, step, bindparam("phase")), version, snoozed,
                  commands.due_count(run_id, step))  # fmt: skip


# Built once, run with parameters: building it (four subqueries and a cache key) on every
# report cost about as much as running it.
_AFTER_LOCK = _after_lock_lookup()


def _check_samples(report: StepReport, max_samples: int) -> None:
    if len(report.samples) > max_samples:
        raise ValidationFailed(
            f"samples: {len(report.samples)} samples is more than the limit of {max_samples}",
            fields=["samples"],
        )
    ids = [s.sample_id for s in report.samples]
    if len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for i, sample in enumerate(report.samples):
        if sample.sample_id in seen:
            raise ValidationFailed(
                f"samples.{i}.sample_id: duplicate sample_id {sample.sample_id!r}",
                fields=[f"samples.{i}.sample_id"],
            )
        seen.add(sample.sample_id)


def ingest_report(
    session: Session,
    run_id: str,
    report: StepReport,
    *,
    max_samples: int,
    actor: str,
    state_cache: analysis.StateCache | None = None,
) -> tuple[Verdict, bool, analysis.PendingFit | None]:
    """Store the report and answer its verdict; (verdict, created, forest fit to run after
    commit)."""
    _check_samples(report, max_samples)
    run = get_run(session, run_id, for_update=True)
    # After the lock, in a statement of its own (so under READ COMMITTED it sees what a report
    # that held the lock before us committed), one round trip: a stored verdict for (run,
    # step, phase), what the analysis needs to know first (state version, snoozes), and
    # whether commands are due.
    stored_verdict, state_version, snoozed_count, due_count = session.connection().execute(
        _AFTER_LOCK, {"run_id": run_id, "step": report.step, "phase": report.phase.value,
                      "now": utcnow()}
    ).one()  # fmt: skip
    if stored_verdict is not None:
        return Verdict.model_validate(stored_verdict), False, None
    if run.status != "running":
        raise Conflict(f"run {run_id} is {run.status}; it takes no more reports", fields=["run"])

    prefetched = analysis.Prefetched(version=state_version, any_snoozed=bool(snoozed_count))
    # The samples go to the database (without flags) while the detectors run.
    writing = store.samples_written_meanwhile(session, run_id=run_id, step=report.step,
                                              samples=report.samples)  # fmt: skip
    result = analysis.analyse(session, run, report, cache=state_cache, prefetched=prefetched,
                              while_evaluating=writing)  # fmt: skip
    finding_ids = _store_findings(session, run, report, result.findings)
    for proposed in result.commands:
        commands.issue(
            session, run_id=run_id, kind=proposed.kind, params=proposed.params,
            reason={"text": proposed.reason_text, "step": report.step,
                    "phase": report.phase.value,
                    "finding_ids": [finding_ids[i] for i in proposed.finding_indexes]},
            origin="policy", held=run.automation == "approve", effective_step=None,
            actor="policy",
        )  # fmt: skip
    # Nothing was due under the lock and the policy issued nothing: no look-up needed.
    due = (commands.deliver_due(session, run_id, report.step, actor=actor)
           if due_count or result.commands else [])  # fmt: skip
    verdict = Verdict(
        step=report.step,
        phase=report.phase,
        drop=[DroppedSample(sample_id=s, reasons=r) for s, r in result.drop.items()],
        skip_step=result.skip_step,
        weights=result.weights,
        commands=[commands.to_schema(c) for c in due],
    )
    step_record_id = store.insert_step(
        session, run_id=run_id, step=report.step, phase=report.phase.value,
        algorithm=report.algorithm.value, metrics=report.metrics,
        sample_count=len(report.samples), verdict=verdict,
    )  # fmt: skip
    if step_record_id is None:  # a twin got in first despite the lock (e.g. SQLite)
        session.rollback()
        twin = store.find_step(session, run_id, report.step, report.phase.value)
        assert twin is not None
        return Verdict.model_validate(twin.verdict), False, None
    store.mark_samples(session, run_id=run_id, step=report.step, flags=result.flags,
                       dropped=set(result.drop))  # fmt: skip
    record_report(session, run, report.step)
    return verdict, True, result.refit


def _store_findings(
    session: Session, run: Run, report: StepReport, found: list[analysis.NewFinding]
) -> list[int]:
    records = []
    for f in found:
        nonfinite = {
            name: label
            for name in ("value", "baseline", "threshold")
            if (v := getattr(f, name)) is not None and (label := nonfinite_label(v)) is not None
        }
        records.append(
            FindingRecord(
                run_id=run.id,
                step=report.step,
                phase=report.phase.value,
                detector=f.detector,
                severity=f.severity,
                metric=f.metric,
                value=f.value,
                baseline=f.baseline,
                threshold=f.threshold,
                nonfinite=nonfinite,
                message=f.message,
                sample_ids=f.sample_ids,
                status="open",
            )  # fmt: skip
        )
    session.add_all(records)
    session.flush()
    webhooks.announce_findings(session, run, records)  # outbox rows, same transaction
    return [r.id for r in records]
