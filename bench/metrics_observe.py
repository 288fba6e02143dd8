"""What Prometheus metrics cost the service, next to the report they observe.

One run of GRPO-like reports (a rollout with N samples, then an update, per step) goes through
the real app in-process on PostgreSQL. Every piece of metrics code a report triggers is timed
where it runs — the report counters and latency histogram, the HTTP response counter, the
session hooks that count findings and command transitions on commit — and summed per report.
Printed: median and p99 of that observation cost, of the report's own latency (the floor), and
their ratio; then the same reports with metrics switched off (RLKEEL_METRICS_ENABLED=0) next to
on, end to end; and the cost of one scrape of /metrics with 1 and 50 running runs.

    python bench/metrics_observe.py [--steps 100] [--samples 256]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchDatabase, machine, percentile  # noqa: E402

from rlkeel.server.app import create_app  # noqa: E402
from rlkeel.server.auth import Role, create_api_key  # noqa: E402
from rlkeel.server.db.migrate import upgrade  # noqa: E402
from rlkeel.server.metrics import session_events  # noqa: E402
from rlkeel.server.settings import Settings  # noqa: E402

RUN = {"name": "bench-metrics", "algorithm": "grpo", "model": {"name": "builtin-tiny"}}


def reports(steps: int, samples: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for step in range(steps):
        rows = [{"sample_id": f"s{step}-{i}", "group_id": f"g{i // 8}",
                 "reward": float(rng.random() < 0.4), "advantage": rng.gauss(0, 1),
                 "length": rng.randint(20, 400), "truncated": rng.random() < 0.02,
                 "kl": abs(rng.gauss(0.02, 0.01)), "log_ratio_max": abs(rng.gauss(0.1, 0.05)),
                 "entropy": abs(rng.gauss(1.0, 0.2)), "repetition": rng.random() * 0.1}
                for i in range(samples)]  # fmt: skip
        metrics = {"reward_mean": 0.4 + rng.gauss(0, 0.02), "kl_mean": abs(rng.gauss(0.02, 0.002)),
                   "entropy_mean": 1.0 + rng.gauss(0, 0.01), "length_mean": 200.0}  # fmt: skip
        out.append({"step": step, "phase": "rollout", "algorithm": "grpo", "metrics": metrics,
                    "samples": rows})  # fmt: skip
        out.append({"step": step, "phase": "update", "algorithm": "grpo",
                    "metrics": {**metrics, "loss": rng.gauss(0.1, 0.01),
                                "grad_norm": abs(rng.gauss(1.0, 0.1)),
                                "clip_frac": abs(rng.gauss(0.001, 3e-4))}})  # fmt: skip
    return out


class ObservationClock:
    """Sums the time spent in metrics code; `take()` returns and resets it (one report)."""

    def __init__(self) -> None:
        self.ns = 0

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns += time.perf_counter_ns() - t0

        return wrapper

    def take(self) -> float:
        ns, self.ns = self.ns, 0
        return ns / 1e9


def instrument(app: Any) -> ObservationClock:
    clock = ObservationClock()
    m = app.state.metrics
    for name in ("observe_report", "observe_report_error", "observe_committed",
                 "observe_http_response"):  # fmt: skip
        setattr(m, name, clock.timed(getattr(m, name)))
    factory = app.state.session_factory
    event.remove(factory, "after_flush", session_events._after_flush)
    event.listen(factory, "after_flush", clock.timed(session_events._after_flush))
    return clock


async def drive(on: Any, off: Any, bodies: list[dict[str, Any]],
                clock: ObservationClock) -> tuple[list[float], list[float], list[float]]:  # fmt: skip
    """Each report goes to the app with metrics and to the one without, alternating which goes
    first, so drift in the machine's load hits both alike."""
    async with _client(on) as c_on, _client(off) as c_off:
        run_on = (await c_on.post("/v1/runs", json=RUN)).json()["id"]
        run_off = (await c_off.post("/v1/runs", json=RUN)).json()["id"]
        lat_on, lat_off, observed = [], [], []
        for i, body in enumerate(bodies):
            order = [(c_on, run_on, lat_on), (c_off, run_off, lat_off)]
            for c, run, out in order if i % 2 == 0 else order[::-1]:
                clock.take()
                t0 = time.perf_counter()
                r = await c.post(f"/v1/runs/{run}/steps", json=body)
                out.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise SystemExit(f"unexpected {r.status_code}: {r.text[:300]}")
                if c is c_on:
                    observed.append(clock.take())
    return lat_on, lat_off, observed


def _client(app: Any) -> httpx.AsyncClient:
    with app.state.session_factory.begin() as s:
        token = create_api_key(s, role=Role.trainer, name="bench")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b",
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip


async def scrape_cost(app: Any, running_runs: int, scrapes: int = 50) -> list[float]:
    async with _client(app) as c:
        existing = len((await c.get("/v1/runs", params={"status": "running"})).json())
        for k in range(max(0, running_runs - existing)):
            run = (await c.post("/v1/runs", json={**RUN, "name": f"extra-{k}"})).json()["id"]
            await c.post(f"/v1/runs/{run}/steps", json={
                "step": 0, "phase": "update", "algorithm": "grpo",
                "metrics": {"reward_mean": 0.5, "grad_norm": 1.0}})  # fmt: skip
        out = []
        for _ in range(scrapes):
            t0 = time.perf_counter()
            r = await c.get("/metrics")
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200
    return out


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    bodies = reports(args.steps, args.samples)
    print(f"machine: {machine()}; {args.steps} steps of a rollout with {args.samples} samples "
          f"and an update, in-process apps on PostgreSQL")  # fmt: skip
    db = BenchDatabase.create()
    try:
        upgrade(Settings(database_url=db.url))
        on = create_app(Settings(database_url=db.url, webhook_worker=False))
        off = create_app(Settings(database_url=db.url, webhook_worker=False,
                                  metrics_enabled=False))  # fmt: skip
        clock = instrument(on)
        lat_on, lat_off, observed = asyncio.run(drive(on, off, bodies, clock))
        scrape_1 = asyncio.run(scrape_cost(on, 1))
        scrape_50 = asyncio.run(scrape_cost(on, 50))
        on.state.engine.dispose()
        off.state.engine.dispose()
    finally:
        db.drop()

    print("\nobserving one report (all metrics code it triggers), against the report itself")
    print("| | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| observation | {ms(observed, 50)} | {ms(observed, 99)} |")
    print(f"| report latency (floor) | {ms(lat_on, 50)} | {ms(lat_on, 99)} |")
    print(f"| ratio | {percentile(observed, 50) / percentile(lat_on, 50):.5f} | "
          f"{percentile(observed, 99) / percentile(lat_on, 99):.5f} |")  # fmt: skip
    print("\nend to end, the same reports with metrics off and on")
    print("| metrics | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| off | {ms(lat_off, 50)} | {ms(lat_off, 99)} |")
    print(f"| on | {ms(lat_on, 50)} | {ms(lat_on, 99)} |")
    print(f"| ratio on/off | {percentile(lat_on, 50) / percentile(lat_off, 50):.3f} | "
          f"{percentile(lat_on, 99) / percentile(lat_off, 99):.3f} |")  # fmt: skip
    print("\none scrape of /metrics (database queries included)")
    print("| running runs | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| 1 | {ms(scrape_1, 50)} | {ms(scrape_1, 99)} |")
    print(f"| 50 | {ms(scrape_50, 50)} | {ms(scrape_50, 99)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
