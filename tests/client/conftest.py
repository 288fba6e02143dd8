"""Fixtures for the client tests: the real client on the real app and the real PostgreSQL.

`client` speaks HTTP over loopback to uvicorn; `aclient` runs in-process through
`httpx.ASGITransport`. Both authenticate as the trainer unless a test builds its own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from rlkeel.client import AsyncClient, Client, RunCreate, SampleStats, StepReport

# Fast retries: the tests count attempts, they do not need to wait for them.
FAST = {"retries": 3, "backoff": 0.001}


def run_create(name: str = "client-run", **overrides: Any) -> RunCreate:
    fields: dict[str, Any] = {
        "name": name, "project": "client-tests", "algorithm": "grpo",
        "model": {"name": "builtin-tiny", "parameter_count": 1000},
    }  # fmt: skip
    fields.update(overrides)
    return RunCreate.model_validate(fields)


def sample(i: int, **overrides: Any) -> SampleStats:
    fields: dict[str, Any] = {
        "sample_id": f"s{i}", "group_id": f"g{i // 4}", "reward": float(i % 2),
        "advantage": 0.5 if i % 2 else -0.5, "length": 10 + i % 7, "kl": 0.01,
        "log_ratio_max": 0.1, "entropy": 1.2, "repetition": 0.0,
    }  # fmt: skip
    fields.update(overrides)
    return SampleStats.model_validate(fields)


def rollout(step: int, n: int = 8, **metrics: float) -> StepReport:
    return StepReport(
        step=step, phase="rollout", algorithm="grpo",
        metrics={"reward_mean": 0.5, "kl_mean": 0.01, "loss": math.nan, "grad_norm": math.inf,
                 "custom_low": -math.inf, **metrics},
        samples=[sample(i) for i in range(n)],
    )  # fmt: skip


def update(step: int, **metrics: float) -> StepReport:
    return StepReport(step=step, phase="update", algorithm="grpo",
                      metrics={"loss": 0.1, "grad_norm": 1.0, **metrics})  # fmt: skip


@pytest.fixture
def client(live_server, tokens) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    with Client(live_server.url, token=tokens.trainer, **FAST) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture
async def aclient(app, tokens) -> AsyncIterator[AsyncClient]:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://rlkeel.test", token=tokens.trainer, transport=transport,
                           **FAST) as c:  # type: ignore[arg-type]  # fmt: skip
        yield c
