"""A small seeded training trace with trouble in it, as StepReport bodies (for server tests)."""

from __future__ import annotations

import random
from typing import Any


def troubled_run(steps: int = 80, samples: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Rollout and update reports: healthy, then KL and grad-norm spikes, a NaN loss, overlong
    repetitive samples, and a stretch of rare successes."""
    rng = random.Random(seed)
    reports: list[dict[str, Any]] = []
    for step in range(steps):
        trouble = steps // 2 <= step < steps // 2 + 12
        rare = step >= steps - 15
        rows = []
        for i in range(samples):
            long_loop = trouble and i == 0
            reward = float(rng.random() < (0.05 if rare else 0.5))
            rows.append({
                "sample_id": f"s{step}-{i}", "group_id": f"g{i // 8}", "reward": reward,
                "advantage": (reward - 0.5) * 2 + rng.gauss(0, 0.1),
                "length": 2000 if long_loop else int(rng.gauss(120, 15)),
                "truncated": long_loop, "kl": abs(rng.gauss(0.02, 0.005)),
                "log_ratio_max": abs(rng.gauss(0.1, 0.02)),
                "entropy": abs(rng.gauss(1.0, 0.05)),
                "repetition": 0.9 if long_loop else rng.random() * 0.05,
            })  # fmt: skip
        positive = sum(r["reward"] > 0 for r in rows) / samples
        reports.append({
            "step": step, "phase": "rollout", "algorithm": "grpo",
            "metrics": {"reward_mean": sum(r["reward"] for r in rows) / samples,
                        "kl_mean": 0.5 if trouble else abs(rng.gauss(0.02, 0.002)),
                        "entropy_mean": 1.0 + rng.gauss(0, 0.01),
                        "length_mean": sum(r["length"] for r in rows) / samples,
                        "positive_frac": positive, "truncation_rate": 0.0},
            "samples": rows,
        })  # fmt: skip
        loss: float | str = "NaN" if step == steps // 2 + 6 else rng.gauss(0.1, 0.01)
        reports.append({
            "step": step, "phase": "update", "algorithm": "grpo",
            "metrics": {"loss": loss, "grad_norm": 50.0 if trouble else abs(rng.gauss(1.0, 0.1)),
                        "clip_frac": 0.3 if trouble else abs(rng.gauss(0.001, 0.0003)),
                        "kl_mean": 0.5 if trouble else abs(rng.gauss(0.02, 0.002)),
                        "entropy_mean": 1.0 + rng.gauss(0, 0.01),
                        "log_ratio_abs_max": 3.0 if trouble else abs(rng.gauss(0.1, 0.01))},
        })  # fmt: skip
    return reports
