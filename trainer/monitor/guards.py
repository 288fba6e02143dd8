"""Local guards: what the trainer does on its own when the service's verdict does not come.

Fail-open means training goes on without the service, but not blind: the two failures that
wreck a batch without any history to compare against are caught here. A sample with a
non-finite number poisons the loss (the update would be skipped whole); a response that ran
into the hard length cap without ending is the classic runaway (a loop), and under a
token-level loss it carries ``length × advantage`` of the gradient (DESIGN §1). Past
``max_drop_frac`` of the batch the step is skipped rather than trained on a remnant, as the
service's own policy does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from rlkeel.trainer.loop import RolloutVerdict

NUMERIC_FIELDS = ("reward", "advantage", "kl", "log_ratio_max", "entropy")
DEFAULT_MAX_DROP_FRAC = 0.5


def guard_reasons(sample: Mapping[str, Any], length_cap: int) -> list[str]:
    """Why the local guards drop ``sample`` (a ``SampleStats`` dict); empty when they keep it."""
    reasons = []
    for name in NUMERIC_FIELDS:
        value = sample.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            reasons.append(f"guard_nonfinite_{name}")
    if int(sample.get("length", 0)) >= length_cap and bool(sample.get("truncated", False)):
        reasons.append("guard_length_cap")
    return reasons


def local_verdict(samples: Iterable[Mapping[str, Any]], *, length_cap: int,
                  max_drop_frac: float = DEFAULT_MAX_DROP_FRAC) -> RolloutVerdict:  # fmt: skip
    """The verdict the guards give a rollout: drop the flagged samples, or skip the step when
    more than ``max_drop_frac`` of the batch is flagged."""
    samples = list(samples)
    drop = [str(s["sample_id"]) for s in samples if guard_reasons(s, length_cap)]
    if samples and len(drop) > max_drop_frac * len(samples):
        return RolloutVerdict(skip_step=True)
    return RolloutVerdict(drop=drop)
