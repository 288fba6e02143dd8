"""Shared pieces of the webhook tests: settings for fast retries, a worker driver, a metrics fake."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from cryptography.fernet import Fernet
from pydantic import SecretStr

from rlkeel.server.settings import Settings
from rlkeel.server.webhooks.worker import DeliveryWorker

TEST_KEY = Fernet.generate_key().decode()


def webhook_settings(base: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secrets_key": SecretStr(TEST_KEY), "webhook_allow_loopback": True,
        "webhook_retry_base_s": 0.2, "webhook_retry_max_s": 1.0, "webhook_timeout_s": 2.0,
        "webhook_poll_interval_s": 0.05, "webhook_worker": False,
        "run_stall_check_interval_s": 0.0, "run_stall_after_s": 3600.0,
    }  # fmt: skip
    values.update(overrides)
    return base.model_copy(update=values)


class DeliveryCounts:
    """The app's real `rlkeel_webhook_deliveries_total` counters (CONTRACTS: the worker calls
    `app.state.metrics.observe_webhook_delivery`), the non-zero ones by result."""

    def __init__(self, metrics: Any) -> None:
        self._registry = metrics.registry

    @property
    def results(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for result in ("delivered", "failed", "dead"):
            n = self._registry.get_sample_value("rlkeel_webhook_deliveries_total",
                                                {"result": result})  # fmt: skip
            if n:
                out[result] = int(n)
        return out


async def drain(worker: DeliveryWorker, until: Any, timeout_s: float = 15.0) -> None:
    """Run worker ticks until `until()` is true."""
    deadline = time.monotonic() + timeout_s
    async with worker.http_client() as client:
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("the worker did not get there in time")
            await worker.run_once(client)
            await asyncio.sleep(0.02)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
