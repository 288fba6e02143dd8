"""Ingest latency of the rollout-phase POST against PostgreSQL, next to a raw COPY floor.

For 256, 1024 and 4096 samples per report: p50/p99 latency of the whole HTTP round trip
(validation, detectors, storage, verdict) and sample rows per second; in the same run the same
rows written with raw psycopg COPY (one transaction per report) as the floor, and the ratio.

    python bench/ingest.py [--reports 60] [--sizes 256 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchDatabase, ServerProcess, create_token, machine, percentile  # noqa: E402


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def bench_copy_floor(
    db_url: str, run_id: str, batches: list[list[dict]], first_step: int
) -> list[float]:
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


def update_body(step: int, rng: random.Random) -> bytes:
    return json.dumps({
        "step": step, "phase": "update", "algorithm": "grpo",
        "metrics": {"loss": rng.gauss(0.1, 0.01), "grad_norm": abs(rng.gauss(1.0, 0.1)),
                    "kl_mean": abs(rng.gauss(0.02, 0.002)), "clip_frac": 0.001,
                    "entropy_mean": 1.0 + rng.gauss(0, 0.01)},
    }).encode()  # fmt: skip


def preload_history(db_url: str, run_id: str, steps: int, samples_per_step: int) -> None:
    """Store `steps` steps of history straight into the tables, as a long run leaves them:
    both phases of every step with their samples, a finding every 20 steps (open, acked and
    snoozed-then-expired ones) and a delivered-and-applied command every 1,000 steps."""
    rng = random.Random(1)
    with psycopg.connect(db_url) as conn, conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY steps (run_id, step, phase, algorithm, sample_count, extra_metrics,"
                      " nonfinite, verdict, created_at, reward_mean, kl_mean, grad_norm)"
                      " FROM STDIN") as copy:  # fmt: skip
            for step in range(steps):
                for phase in ("rollout", "update"):
                    copy.write_row((run_id, step, phase, "grpo",
                                    samples_per_step if phase == "rollout" else 0, "{}", "{}",
                                    f'{{"step": {step}}}', "2026-01-01T00:00:00Z",
                                    rng.random(), 0.02, 1.0))  # fmt: skip
        with cur.copy(f"COPY samples ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
            for step in range(steps):
                for i in range(samples_per_step):
                    copy.write_row((run_id, step, f"s{step}-{i}", f"g{i // 8}", 1.0, 0.5, 100,
                                    False, 0.02, 0.1, 1.0, 0.0, None, None, None, False))  # fmt: skip
        with cur.copy("COPY findings (run_id, step, phase, detector, severity, metric, value,"
                      " baseline, threshold, nonfinite, message, sample_ids, status,"
                      " snoozed_until, created_at) FROM STDIN") as copy:  # fmt: skip
            for step in range(0, steps, 20):
                status = ("open", "acked", "snoozed")[step // 20 % 3]
                copy.write_row((run_id, step, "update", "kl_spike", "warning", "kl_mean", 0.5,
                                0.02, 4.0, "{}", "preloaded", "[]", status,
                                "2026-01-01T00:00:00Z" if status == "snoozed" else None,
                                "2026-01-01T00:00:00Z"))  # fmt: skip
        with cur.copy("COPY commands (run_id, kind, params, reason, origin, status,"
                      " effective_step, applied_step, created_at, updated_at) FROM STDIN") as copy:  # fmt: skip
            for step in range(500, steps, 1000):
                copy.write_row((run_id, "scale_lr", '{"factor": 0.5}', '{"text": "preloaded"}',
                                "policy", "applied", None, step + 1, "2026-01-01T00:00:00Z",
                                "2026-01-01T00:00:00Z"))  # fmt: skip
        cur.execute("UPDATE runs SET last_step = %s WHERE id = %s", (steps - 1, run_id))
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table in ("steps", "samples", "findings", "commands"):
            conn.execute(f"VACUUM ANALYZE {table}")


def state_size(db_url: str, run_id: str) -> tuple[int, int]:
    """(bytes of the run's stored detector state, all three parts, its version)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT length(blob) + coalesce(length(memory), 0) + coalesce(length(fit), 0),"
            " version FROM detector_state WHERE run_id = %s", (run_id,),
        ).fetchone()  # fmt: skip
    return (int(row[0]), int(row[1])) if row else (0, 0)


def bench_long_run(url: str, token: str, db_url: str, args: argparse.Namespace) -> None:
    """p99 verdict latency at 1,024 samples early in a run and deep into a long one.

    Both runs get the same treatment: `--warm` real steps (rollout and update reports) fill
    every detector window and fit the forest, then `--reports` steps are measured (rollout
    verdicts; the updates in between are sent but not timed). The long run's first
    `long_step - warm` steps are preloaded into the tables as a long run leaves them; the
    detector state is bounded, so after the warm-up it is what a real run's would be at that
    step, except for counters (its size is printed to show it). The two runs' steps are sent
    interleaved, one step of each in turn, so a change in the machine's load hits both."""
    print(f"\nverdict latency vs run length ({args.size_long} samples, {args.reports} steps timed"
          f" after {args.warm} warm-up steps, rollout and update reports, the two runs"
          f" interleaved)")  # fmt: skip
    starts = (100, args.long_step)
    runs = {}
    for start in starts:
        runs[start] = register(url, token, f"long-{start}")
        if start - args.warm > 0:
            print(f"  preloading {start - args.warm:,} steps of history...", file=sys.stderr)
            preload_history(db_url, runs[start], start - args.warm, args.preload_samples)
    rngs = {start: random.Random(2) for start in starts}  # the same reports at both depths
    lat: dict[int, list[float]] = {start: [] for start in starts}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                             "content-type": "application/json"},
                      timeout=60) as client:  # fmt: skip
        for k in range(args.warm + args.reports):
            for start in starts:
                rng, step = rngs[start], start - args.warm + k
                rollout = report_body(step, make_samples(step, args.size_long, rng))
                t0 = time.perf_counter()
                r = client.post(f"/v1/runs/{runs[start]}/steps", content=rollout)
                if k >= args.warm:
                    lat[start].append(time.perf_counter() - t0)
                u = client.post(f"/v1/runs/{runs[start]}/steps", content=update_body(step, rng))
                if r.status_code != 201 or u.status_code != 201:
                    raise SystemExit(f"unexpected {r.status_code}/{u.status_code}: {r.text[:300]}")
    print(f"{'at step':>8} {'p50 ms':>8} {'p99 ms':>8} {'state bytes':>12}")
    figures = {}
    for start in starts:
        size, _ = state_size(db_url, runs[start])
        figures[start] = (percentile(lat[start], 50), percentile(lat[start], 99))
        print(f"{start:>8,} {figures[start][0] * 1e3:>8.1f} {figures[start][1] * 1e3:>8.1f}"
              f" {size:>12,}")  # fmt: skip
    ratio = figures[args.long_step][1] / figures[100][1]
    p50_ratio = figures[args.long_step][0] / figures[100][0]
    print(f"ratio step {args.long_step:,} / step 100: p99 {ratio:.2f}, p50 {p50_ratio:.2f}"
          f"  (target p99 <= 1.2)")  # fmt: skip


DETECTORS_OFF: dict | None = None


def register(url: str, token: str, name: str) -> str:
    r = httpx.post(f"{url}/v1/runs", headers={"Authorization": f"Bearer {token}"},
                   json={"name": name, "algorithm": "grpo", "model": {"name": "bench"}})  # fmt: skip
    r.raise_for_status()
    run_id = str(r.json()["id"])
    if DETECTORS_OFF is not None:  # storage and API path only: every detector disabled
        r = httpx.put(f"{url}/v1/runs/{run_id}/policy", json=DETECTORS_OFF,
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        r.raise_for_status()
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=60, help="reports per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed reports first (connections, the refit worker's start, "
                             "the first forest)")  # fmt: skip
    parser.add_argument(
        "--long-step",
        type=int,
        default=50_000,
        help="the step deep into a run at which latency is measured again",
    )
    parser.add_argument("--size-long", type=int, default=1024)
    parser.add_argument(
        "--warm",
        type=int,
        default=60,
        help="real steps before measuring (fills the detectors' windows, fits the forest)",
    )
    parser.add_argument(
        "--preload-samples", type=int, default=64, help="samples per preloaded history step"
    )
    parser.add_argument("--skip-long", action="store_true", help="skip the long-run comparison")
    parser.add_argument("--detectors", choices=["on", "off"], default="on",
                        help="off: disable every detector in the runs' policy (ingest path only)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min) at start: {load()}")
    print("store: PostgreSQL on 127.0.0.1 (a fresh database), server: `rlkeel serve`, 1 worker")
    print(f"detectors: {args.detectors}")
    db = BenchDatabase.create()
    server = None
    try:
        server = ServerProcess(db.url)
        token = create_token(db.url, role="admin")
        if args.detectors == "off":
            global DETECTORS_OFF
            from rlkeel.server.detectors import DETECTORS

            DETECTORS_OFF = {"detectors": {d.name: {"enabled": False} for d in DETECTORS}}
        rng = random.Random(0)
        print(f"{'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/s':>10} {'floor p50':>10} "
              f"{'floor p99':>10} {'ratio p50':>9} {'ratio p99':>9} {'server CPU ms':>13}")  # fmt: skip
        for size in args.sizes:
            run_id = register(server.url, token, f"bench-{size}")
            n = args.reports + args.warmup
            batches = [make_samples(step, size, rng) for step in range(n)]
            bodies = [report_body(step, b) for step, b in enumerate(batches)]
            cpu0 = cpu_seconds(server.proc.pid)
            http_lat = bench_http(server.url, token, run_id, bodies)[args.warmup :]
            cpu_ms = (cpu_seconds(server.proc.pid) - cpu0) / len(bodies) * 1e3
            floor_run = register(server.url, token, f"floor-{size}")
            floor_lat = bench_copy_floor(db.url, floor_run, batches, 0)[args.warmup :]
            p50, p99 = percentile(http_lat, 50), percentile(http_lat, 99)
            f50, f99 = percentile(floor_lat, 50), percentile(floor_lat, 99)
            rows_per_s = size * len(http_lat) / sum(http_lat)
            print(f"{size:>8} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f} {rows_per_s:>10.0f} "
                  f"{f50 * 1e3:>10.1f} {f99 * 1e3:>10.1f} {p50 / f50:>9.2f} {p99 / f99:>9.2f}"
                  f" {cpu_ms:>13.1f}")  # fmt: skip
        print("targets at 1024 samples: p99 <= 50 ms, end-to-end <= 3x the COPY floor")
        print("server CPU ms: CPU time of the server process per report (all reports of the size,"
              " warm-up included): unlike latency, it does not grow with the machine's load")  # fmt: skip
        if not args.skip_long:
            bench_long_run(server.url, token, db.url, args)
        print(f"load average (1, 5, 15 min) at end: {load()}")
    finally:
        if server is not None:
            server.stop()
        db.drop()


if __name__ == "__main__":
    main()
