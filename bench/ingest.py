"""Ingest latency of the rollout-phase POST against PostgreSQL, next to a raw COPY floor.

For 256, 1024 and 4096 samples per report: p50/p99 latency of the whole HTTP round trip
(validation, detectors, storage, verdict) and sample rows per second; in the same run the same
rows written with raw psycopg COPY (one transaction per report) as the floor, and the ratio.

    python bench/ingest.py [--reports 60] [--sizes 256 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchDatabase, ServerProcess, create_token, machine, percentile  # noqa: E402


def make_samples(step: int, n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        out.append({
            "sample_id": f"s{step}-{i}", "group_id": f"g{i // 8}",
            "reward": float(rng.random() < 0.4), "advantage": rng.gauss(0, 1),
            "length": rng.randint(20, 400), "truncated": rng.random() < 0.02,
            "kl": abs(rng.gauss(0.02, 0.01)), "log_ratio_max": abs(rng.gauss(0.1, 0.05)),
            "entropy": abs(rng.gauss(1.0, 0.2)), "repetition": rng.random() * 0.1,
        })  # fmt: skip
    return out


def report_body(step: int, samples: list[dict]) -> bytes:
    return json.dumps({
        "step": step, "phase": "rollout", "algorithm": "grpo",
        "metrics": {"reward_mean": 0.4, "kl_mean": 0.02, "length_mean": 200.0},
        "samples": samples,
    }).encode()  # fmt: skip


def bench_http(url: str, token: str, run_id: str, bodies: list[bytes]) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                             "content-type": "application/json"},
                      timeout=30) as client:  # fmt: skip
        for body in bodies:
            t0 = time.perf_counter()
            r = client.post(f"/v1/runs/{run_id}/steps", content=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 201:
                raise SystemExit(f"unexpected {r.status_code}: {r.text[:500]}")
    return latencies


COPY_COLUMNS = ("run_id", "step", "sample_id", "group_id", "reward",
                "advantage", "length", "truncated", "kl", "log_ratio_max", "entropy",
                "repetition", "extra", "nonfinite", "flags", "dropped")  # fmt: skip


def bench_copy_floor(db_url: str, run_id: str, batches: list[list[dict]], first_step: int) -> list[float]:
    """The same rows, written with raw COPY: one transaction per report, plus its step row."""
    latencies = []
    with psycopg.connect(db_url) as conn:
        for k, samples in enumerate(batches):
            step = first_step + k
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO steps (run_id, step, phase, algorithm, sample_count, extra_metrics,"
                    " nonfinite, verdict, created_at) VALUES (%s, %s, 'rollout', 'grpo', %s, '{}',"
                    " '{}', '{}', now())", (run_id, step, len(samples)),
                )  # fmt: skip
                with cur.copy(f"COPY samples ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
                    for s in samples:
                        copy.write_row((run_id, step, s["sample_id"], s["group_id"],
                                        s["reward"], s["advantage"], s["length"], s["truncated"],
                                        s["kl"], s["log_ratio_max"], s["entropy"], s["repetition"],
                                        None, None, None, False))  # fmt: skip
            latencies.append(time.perf_counter() - t0)
    return latencies


def register(url: str, token: str, name: str) -> str:
    r = httpx.post(f"{url}/v1/runs", headers={"Authorization": f"Bearer {token}"},
                   json={"name": name, "algorithm": "grpo", "model": {"name": "bench"}})  # fmt: skip
    r.raise_for_status()
    return str(r.json()["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=60, help="reports per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print("store: PostgreSQL on 127.0.0.1 (a fresh database), server: `rlkeel serve`, 1 worker")
    db = BenchDatabase.create()
    server = None
    try:
        server = ServerProcess(db.url)
        token = create_token(db.url)
        rng = random.Random(0)
        print(f"{'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/s':>10} {'floor p50':>10} "
              f"{'floor p99':>10} {'ratio p50':>9} {'ratio p99':>9}")  # fmt: skip
        for size in args.sizes:
            run_id = register(server.url, token, f"bench-{size}")
            n = args.reports + args.warmup
            batches = [make_samples(step, size, rng) for step in range(n)]
            bodies = [report_body(step, b) for step, b in enumerate(batches)]
            http_lat = bench_http(server.url, token, run_id, bodies)[args.warmup:]
            floor_run = register(server.url, token, f"floor-{size}")
            floor_lat = bench_copy_floor(db.url, floor_run, batches, 0)[args.warmup:]
            p50, p99 = percentile(http_lat, 50), percentile(http_lat, 99)
            f50, f99 = percentile(floor_lat, 50), percentile(floor_lat, 99)
            rows_per_s = size * len(http_lat) / sum(http_lat)
            print(f"{size:>8} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f} {rows_per_s:>10.0f} "
                  f"{f50 * 1e3:>10.1f} {f99 * 1e3:>10.1f} {p50 / f50:>9.2f} {p99 / f99:>9.2f}")  # fmt: skip
        print("targets at 1024 samples: p99 <= 50 ms, end-to-end <= 3x the COPY floor")
    finally:
        if server is not None:
            server.stop()
        db.drop()


if __name__ == "__main__":
    main()
