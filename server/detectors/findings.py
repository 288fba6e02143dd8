"""What a detector says: one `Finding` per firing, with its evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rlkeel.client.schemas import Severity

__all__ = ["SEVERITY_RANK", "Finding"]

SEVERITY_RANK = {Severity.info: 0, Severity.warning: 1, Severity.high: 2, Severity.critical: 3}


@dataclass(frozen=True)
class Finding:
    detector: str
    severity: Severity
    metric: str | None
    value: float | None
    """Observed value (may be NaN/±inf for the non-finite rules)."""
    baseline: float | None
    """What the detector expected (median, EWMA mean, ...)."""
    threshold: float | None
    step: int
    message: str
    sample_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d
