"""A stored run's history — run, per-step metrics, findings, commands — read through the API
(any role that may list commands: trainer, operator, admin) or straight from the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlkeel.client.schemas import Command, Finding, Run, StepRead

if TYPE_CHECKING:
    from rlkeel.client import Client

__all__ = ["RunHistory", "from_api", "from_database"]

_PAGE = 1000


@dataclass
class RunHistory:
    run: Run
    steps: list[StepRead]
    findings: list[Finding]
    commands: list[Command]
    metrics: dict[int, dict[str, float]] = field(init=False)
    """step → metrics, the update report's over its rollout's (what the step ended with)."""

    def __post_init__(self) -> None:
        merged: dict[int, dict[str, float]] = {}
        for s in sorted(self.steps, key=lambda s: (s.step, s.phase.value != "rollout")):
            merged.setdefault(s.step, {}).update(s.metrics)
        self.metrics = dict(sorted(merged.items()))

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric, where it was reported."""
        xs = [step for step, m in self.metrics.items() if name in m]
        return xs, [float(self.metrics[x][name]) for x in xs]

    def dropped_samples(self) -> int:
        return sum(len(s.verdict.drop) for s in self.steps if s.phase.value == "rollout")

    def skipped_steps(self) -> int:
        return sum(1 for s in self.steps if s.phase.value == "rollout" and s.verdict.skip_step)


def command_step(c: Command) -> int | None:
    """The step a command belongs to: the report that caused it (policy commands), else where
    it was applied, else where it was due."""
    step: Any = (c.reason or {}).get("step")
    if isinstance(step, int):
        return step
    return c.applied_step if c.applied_step is not None else c.effective_step


def from_api(client: Client, run_id: str) -> RunHistory:
    run = client.get_run(run_id)
    steps = list(client.iter_steps(run_id, page_size=_PAGE))
    findings: list[Finding] = []
    while page := client.list_findings(run_id, after=findings[-1].id if findings else None,
                                       limit=_PAGE):  # fmt: skip
        findings += page
        if len(page) < _PAGE:
            break
    commands: list[Command] = []
    while page_c := client.list_commands(run_id, after=commands[-1].id if commands else None,
                                         limit=_PAGE):  # fmt: skip
        commands += page_c
        if len(page_c) < _PAGE:
            break
    return RunHistory(run, steps, findings, commands)


def from_database(run_id: str, settings: Any = None) -> RunHistory:
    """Read with the server's own storage code (needs the ``server`` extra)."""
    from sqlalchemy import select

    from rlkeel.server.commands import service as commands
    from rlkeel.server.db.engine import make_engine, make_session_factory
    from rlkeel.server.db.models import FindingRecord
    from rlkeel.server.findings.endpoints import to_schema as finding_schema
    from rlkeel.server.runs.service import get_run
    from rlkeel.server.runs.service import to_schema as run_schema
    from rlkeel.server.settings import Settings
    from rlkeel.server.steps import store

    engine = make_engine(settings or Settings())
    try:
        with make_session_factory(engine)() as session:
            run = run_schema(get_run(session, run_id))
            steps: list[StepRead] = []
            after: int | None = None
            while True:
                rows, after = store.list_steps(session, run_id, after=after, limit=_PAGE,
                                               phase=None)  # fmt: skip
                steps += [store.step_to_schema(r) for r in rows]
                if after is None:
                    break
            stmt = select(FindingRecord).where(FindingRecord.run_id == run_id)
            findings = [finding_schema(f)
                        for f in session.scalars(stmt.order_by(FindingRecord.id))]  # fmt: skip
            cmds = [commands.to_schema(c) for c in commands.list_for_run(
                session, run_id, statuses=None, after=None, limit=10**9)]  # fmt: skip
    finally:
        engine.dispose()
    return RunHistory(run, steps, findings, cmds)
