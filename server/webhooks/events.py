"""What a webhook can subscribe to, and how severe each event is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from rlkeel.client.schemas import Severity


class EventType(StrEnum):
    finding_raised = "finding.raised"
    command_issued = "command.issued"
    command_applied = "command.applied"
    command_failed = "command.failed"
    command_rejected = "command.rejected"
    run_stalled = "run.stalled"


SEVERITY_RANK: dict[str, int] = {s.value: i for i, s in enumerate(Severity)}
"""info < warning < high < critical."""

# Events other than findings carry a fixed severity, so that `min_severity` filters them too.
COMMAND_SEVERITY: dict[str, Severity] = {
    "command.issued": Severity.warning,
    "command.applied": Severity.info,
    "command.failed": Severity.high,
    "command.rejected": Severity.warning,
}
STALL_SEVERITY = Severity.high


def at_least(severity: str, minimum: str) -> bool:
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[minimum]


@dataclass(frozen=True)
class Event:
    """One thing that happened, before it is rendered for a subscription's format."""

    type: EventType
    severity: Severity
    occurred_at: datetime
    run: dict[str, Any]
    """id, name, project of the run it concerns."""
    data: dict[str, Any]
    summary: str
    """One line for people (an alert's summary)."""
    # The same key always gives the same message id: `run.stalled` uses it to announce one
    # silence once, across server processes, with no state of its own.
    dedup_key: str | None = None
