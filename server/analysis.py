"""The seam between ingest and the detectors/policy (issue 4 fills it in).

`analyse` gets the locked run and a validated report and returns what the verdict must say
and what to store. Until the detectors land it flags nothing: the flow is real, the answer
is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlkeel.client.schemas import StepReport
from rlkeel.server.db.models import Run
from sqlalchemy.orm import Session


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


def analyse(session: Session, run: Run, report: StepReport) -> Analysis:
    return Analysis()
