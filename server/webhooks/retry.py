"""When to try a failed delivery again: exponential back-off with jitter, then a dead letter.

Attempt n (1-based) that failed waits base·2^(n-1), capped, then scaled by a random factor in
[0.5, 1] ("equal jitter") so that many deliveries failing together do not retry in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetrySchedule:
    base_s: float = 5.0
    max_s: float = 6 * 3600.0
    max_attempts: int = 12

    def nominal_delay_s(self, failed_attempts: int) -> float:
        """Back-off after `failed_attempts` failures, before jitter."""
        return float(min(self.max_s, self.base_s * 2.0 ** (failed_attempts - 1)))

    def delay_s(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        nominal = self.nominal_delay_s(failed_attempts)
        return nominal * (0.5 + 0.5 * (rng or random).random())

    def is_exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
