"""Builders for request bodies used across server tests."""

from __future__ import annotations

from typing import Any

RUN = {"name": "run-under-test", "algorithm": "grpo", "model": {"name": "builtin-tiny"}}


def sample(i: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sample_id": f"s{i}", "group_id": f"g{i // 4}", "reward": float(i % 2),
        "advantage": 0.5 if i % 2 else -0.5, "length": 10 + i % 7, "truncated": False,
        "kl": 0.01, "log_ratio_max": 0.1, "entropy": 1.2, "repetition": 0.0,
    }  # fmt: skip
    body.update(overrides)
    return body


def rollout(step: int, n: int = 16, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "step": step, "phase": "rollout", "algorithm": "grpo",
        "metrics": {"reward_mean": 0.5, "kl_mean": 0.01},
        "samples": [sample(i) for i in range(n)],
    }  # fmt: skip
    body.update(overrides)
    return body


def update(step: int, **metrics: float) -> dict[str, Any]:
    return {"step": step, "phase": "update", "algorithm": "grpo",
            "metrics": {"loss": 0.1, "grad_norm": 1.0, **metrics}}  # fmt: skip
