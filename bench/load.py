"""Load: N simulated trainers at once against `rlkeel serve` on PostgreSQL.

Each trainer registers a run and, for a fixed number of steps, sends a rollout report with
`--samples` samples (the verdict decides which samples the update may use), then an update
report (step metrics), through the client SDK (`rlkeel.client.AsyncClient`: its timeouts and
its retries of 5xx and connection errors, as a real trainer has them). Two modes:

- paced: one step per second per trainer (a fast real RL step), trainers out of phase;
- flat: no pause, to find saturation.

For every (mode, trainers) it prints throughput (rollout reports and sample rows per second),
p50/p99 latency per phase (first send to verdict, retries included), errors (error answers
and transport failures the client saw, retried or not; reports that never got a verdict) and
then checks the database: every report stored exactly once (one `steps` row per (run, step,
phase), `--samples` distinct sample rows per rollout, nothing extra). `--resend` re-sends a
share of reports after their verdict, as a trainer that timed out would: the answer must be
the stored verdict (200) and nothing more is written. The floor, measured in the same run, is
the same rollout rows written with a raw psycopg COPY, one transaction per report, one writer.

    python bench/load.py [--trainers 1 8 32] [--modes paced flat] [--steps 30]
        [--samples 1024] [--workers 2] [--pool-size 10] [--resend 0.02] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BenchDatabase,
    ServerProcess,
    create_token,
    machine,
    percentile,
)

from rlkeel.client import AsyncClient  # noqa: E402
from rlkeel.client._calls import _verdict  # noqa: E402
from rlkeel.client._exceptions import APIError, TransportError  # noqa: E402
from rlkeel.client._transport import Call  # noqa: E402

PHASES = ("rollout", "update")


# ---------------------------------------------------------------- bodies


def make_samples(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """A healthy GRPO batch: groups of 8, binary rewards, bounded advantages."""
    out = []
    for i in range(n):
        out.append({
            "sample_id": f"s{i}", "group_id": f"g{i // 8}",
            "reward": float(rng.random() < 0.4), "advantage": rng.gauss(0, 1),
            "length": rng.randint(20, 400), "truncated": rng.random() < 0.02,
            "kl": abs(rng.gauss(0.02, 0.01)), "log_ratio_max": abs(rng.gauss(0.1, 0.05)),
            "entropy": abs(rng.gauss(1.0, 0.2)), "repetition": rng.random() * 0.1,
        })  # fmt: skip
    return out


class Bodies:
    """Pre-encoded report bodies: the load generator shares the server's 2 cores, so it must
    spend next to nothing per report. A few sample batches are encoded once; a report body is
    the step's header spliced onto one of them."""

    def __init__(self, samples: int, variants: int = 8, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.samples = samples
        self._batches = [
            json.dumps(make_samples(samples, rng), separators=(",", ":")).encode()
            for _ in range(variants)
        ]

    def rollout(self, step: int, trainer: int) -> bytes:
        batch = self._batches[(step + trainer) % len(self._batches)]
        head = (f'{{"step":{step},"phase":"rollout","algorithm":"grpo","metrics":'
                '{"reward_mean":0.4,"kl_mean":0.02,"length_mean":200.0,"entropy_mean":1.0},'
                '"samples":')  # fmt: skip
        return head.encode() + batch + b"}"

    @staticmethod
    def update(step: int) -> bytes:
        grad_norm = 1.0 + 0.01 * (step % 7)
        return (
            f'{{"step":{step},"phase":"update","algorithm":"grpo","metrics":{{"loss":0.1,'
            f'"grad_norm":{grad_norm:.4f},"clip_frac":0.001,"kl_mean":0.02,"entropy_mean":1.0,'
            '"reward_mean":0.4}}'
        ).encode()


# ---------------------------------------------------------------- trainers


@dataclass
class TrainerLog:
    run_id: str
    latencies: dict[str, list[tuple[int, float]]] = field(
        default_factory=lambda: {p: [] for p in PHASES})
    """(step, seconds) per phase."""
    rollouts_done: list[tuple[int, float]] = field(default_factory=list)
    """(step, perf_counter) when each rollout's verdict came back."""
    sent: list[tuple[int, str]] = field(default_factory=list)
    """(step, phase) of every report that got a verdict."""
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    """(step, phase, error) of reports that never got a verdict."""
    resent: int = 0
    resend_mismatches: int = 0


@dataclass
class Counters:
    error_answers: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0


class Trainer:
    """One simulated trainer: its own client (connection), its own run."""

    def __init__(self, index: int, url: str, token: str, bodies: Bodies, counters: Counters,
                 *, timeout: float, retries: int) -> None:  # fmt: skip
        self.index = index
        self.bodies = bodies
        self.counters = counters
        self.client = AsyncClient(url, token=token, timeout=timeout, retries=retries,
                                  backoff=0.2)  # fmt: skip
        # Count every error answer and every failed attempt (a timeout, a refused
        # connection), also the ones the client retried and recovered from.
        self.client._http.event_hooks["response"].append(self._count)
        send = self.client._http.send

        async def counting_send(*args: Any, **kwargs: Any) -> httpx.Response:
            try:
                return await send(*args, **kwargs)
            except httpx.TransportError:
                self.counters.transport_errors += 1
                raise

        self.client._http.send = counting_send  # type: ignore[method-assign]
        self.log: TrainerLog | None = None

    async def _count(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            self.counters.error_answers[response.status_code] += 1

    async def register(self, label: str) -> str:
        run = await self.client.register_run(
            name=f"load-{label}-{self.index}", algorithm="grpo", model={"name": "load-bench"},
            project="load-bench",
        )  # fmt: skip
        self.log = TrainerLog(run_id=run.id)
        return run.id

    async def _report(self, step: int, phase: str, body: bytes) -> Any:
        assert self.log is not None
        call = Call("POST", f"/v1/runs/{self.log.run_id}/steps", _verdict, body=body,
                    idempotent=True)  # fmt: skip
        t0 = time.perf_counter()
        try:
            verdict = await self.client._send(call)
        except (APIError, TransportError) as exc:
            self.log.failed.append((step, phase, type(exc).__name__))
            return None
        done = time.perf_counter()
        self.log.latencies[phase].append((step, done - t0))
        if phase == "rollout":
            self.log.rollouts_done.append((step, done))
        self.log.sent.append((step, phase))
        return verdict

    async def step(self, step: int, resend: float, rng: random.Random) -> None:
        assert self.log is not None
        for phase in PHASES:
            body = (
                self.bodies.rollout(step, self.index) if phase == "rollout" else Bodies.update(step)
            )
            verdict = await self._report(step, phase, body)
            if verdict is not None and rng.random() < resend:
                # A trainer that timed out sends the same report again: same verdict, no write.
                call = Call("POST", f"/v1/runs/{self.log.run_id}/steps", _verdict, body=body,
                            idempotent=True)  # fmt: skip
                try:
                    again = await self.client._send(call)
                except (APIError, TransportError):
                    self.log.failed.append((step, phase, "resend"))
                    continue
                self.log.resent += 1
                if again != verdict:
                    self.log.resend_mismatches += 1

    async def run(self, steps: int, *, paced: bool, start: float, resend: float,
                  window: Window) -> None:  # fmt: skip
        rng = random.Random(1000 + self.index)
        for k in range(steps):
            if k == window.warmup:
                window.warmed_up()
            if paced:
                delay = start + k - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.step(k, resend, rng)
        window.finished()

    async def close(self) -> None:
        await self.client.close()


# ---------------------------------------------------------------- where the CPU goes

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class CpuSnapshot:
    server: dict[str, float]
    postgres: dict[str, float]
    generator: float
    machine_busy: float
    machine_total: float


def cpu_snapshot(server_pid: int | None, db_name: str | None) -> CpuSnapshot:
    """CPU seconds so far of the server's process tree, of the PostgreSQL backends serving the
    bench database, of this process, and of the whole machine (busy and total)."""
    stats = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (st := _proc_stat(pid)) is not None:
            stats[pid] = st
    tree: set[str] = {str(server_pid)} if server_pid else set()
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if pid not in tree and str(ppid) in tree:
                tree.add(pid)
                grew = True
    backends = {pid for pid in stats if db_name and db_name in _cmdline(pid)
                and _cmdline(pid).startswith("postgres")}  # fmt: skip
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    total = sum(ticks)
    idle = ticks[3] + ticks[4]
    return CpuSnapshot(
        server={p: stats[p][1] for p in tree if p in stats},
        postgres={p: stats[p][1] for p in backends},
        generator=usage.ru_utime + usage.ru_stime,
        machine_busy=(total - idle) / _TICK, machine_total=total / _TICK,
    )  # fmt: skip


def cpu_split(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by whom; `others` is the rest of the machine."""
    def spent(a: dict[str, float], b: dict[str, float]) -> float:
        return sum(v - b.get(p, 0.0) for p, v in a.items())

    out = {"server": spent(after.server, before.server),
           "postgres": spent(after.postgres, before.postgres),
           "generator": after.generator - before.generator,
           "machine_busy": after.machine_busy - before.machine_busy,
           "machine_total": after.machine_total - before.machine_total}  # fmt: skip
    out["others"] = max(0.0, out["machine_busy"] - out["server"] - out["postgres"]
                        - out["generator"])  # fmt: skip
    per_process = [v - before.server.get(p, 0.0) for p, v in after.server.items()]
    out["server_busiest_share"] = max(per_process, default=0.0) / (out["server"] or 1.0)
    return out


def wait_for_workers(server_pid: int, workers: int, timeout_s: float = 120.0) -> None:
    """Wait until all `workers` server processes have started (each idle, done importing).

    `/readyz` answers as soon as the first process is up; trainers that connect before the
    others are would all stay on it (keep-alive), and the run would measure one process."""
    if workers <= 1:
        return
    deadline = time.monotonic() + timeout_s
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        kids = {pid: st[1] for pid in os.listdir("/proc") if pid.isdigit()
                and (st := _proc_stat(pid)) is not None and st[0] == server_pid
                and "spawn_main" in _cmdline(pid)}  # fmt: skip
        if len(kids) >= workers and kids == last:
            return
        last = kids
        time.sleep(0.5)
    raise RuntimeError(f"{workers} server processes did not all start in {timeout_s:.0f} s")


# ---------------------------------------------------------------- one configuration


class Window:
    """The measured stretch of a run: from when the last trainer is past its warm-up steps to
    when the first trainer is done, so every trainer is busy and warmed up throughout. CPU
    snapshots are taken at both ends."""

    def __init__(self, trainers: int, warmup: int, server_pid: int | None,
                 db_name: str | None) -> None:  # fmt: skip
        self.trainers, self.warmup = trainers, warmup
        self.server_pid, self.db_name = server_pid, db_name
        self._warm = 0
        self.begin: tuple[float, CpuSnapshot] | None = None
        self.start: tuple[float, CpuSnapshot] | None = None
        self.end: tuple[float, CpuSnapshot] | None = None

    def _mark(self) -> tuple[float, CpuSnapshot]:
        return time.perf_counter(), cpu_snapshot(self.server_pid, self.db_name)

    def warmed_up(self) -> None:
        self._warm += 1
        if self._warm == self.trainers:
            self.start = self._mark()

    def finished(self) -> None:
        if self.end is None:
            self.end = self._mark()


@dataclass
class Accounting:
    expected_reports: int
    stored_reports: int
    missing: int
    duplicated: int
    unexpected: int
    bad_sample_counts: int

    @property
    def exactly_once(self) -> bool:
        return (self.missing == 0 and self.duplicated == 0 and self.unexpected == 0
                and self.bad_sample_counts == 0)  # fmt: skip


def check_exactly_once(db_url: str, runs: list[str], steps: int, samples: int) -> Accounting:
    """Every (run, step, phase) stored exactly once, each rollout with exactly `samples`
    distinct sample rows; nothing stored that was not sent."""
    expected = {(r, k, p) for r in runs for k in range(steps) for p in PHASES}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT run_id, step, phase, count(*) FROM steps WHERE run_id = ANY(%s)"
            " GROUP BY run_id, step, phase", (runs,),
        ).fetchall()  # fmt: skip
        sample_rows = conn.execute(
            "SELECT run_id, step, count(*), count(DISTINCT sample_id) FROM samples"
            " WHERE run_id = ANY(%s) GROUP BY run_id, step", (runs,),
        ).fetchall()  # fmt: skip
    stored = {(str(r), int(k), str(p)): int(n) for r, k, p, n in rows}
    per_step = {(str(r), int(k)): (int(n), int(d)) for r, k, n, d in sample_rows}
    bad = sum(
        1
        for r in runs
        for k in range(steps)
        if per_step.get((r, k)) != (samples, samples)
    ) + sum(1 for (r, k) in per_step if k >= steps)  # fmt: skip
    return Accounting(
        expected_reports=len(expected),
        stored_reports=sum(stored.values()),
        missing=len(expected - stored.keys()),
        duplicated=sum(n - 1 for n in stored.values() if n > 1),
        unexpected=len(stored.keys() - expected),
        bad_sample_counts=bad,
    )


@dataclass
class LoadResult:
    mode: str
    trainers: int
    steps: int
    samples: int
    wall_s: float
    reports_per_s: float
    """Rollout reports (of `samples` samples) per second, first send to last verdict."""
    rows_per_s: float
    latency_ms: dict[str, dict[str, float]]
    error_answers: dict[str, int]
    transport_errors: int
    failed_reports: int
    resent: int
    resend_mismatches: int
    accounting: Accounting
    cpu_s: dict[str, float] | None = None
    """CPU seconds during the run by server, postgres (bench database), generator, others."""

    @property
    def ok(self) -> bool:
        return (self.accounting.exactly_once and self.failed_reports == 0
                and self.resend_mismatches == 0)  # fmt: skip


async def run_load(url: str, token: str, db_url: str, *, trainers: int, steps: int, mode: str,
                   bodies: Bodies, resend: float = 0.0, timeout: float = 30.0,
                   retries: int = 5, server_pid: int | None = None,
                   db_name: str | None = None, warmup: int = 0) -> LoadResult:  # fmt: skip
    """`trainers` trainers for `steps` steps each; then the database accounting. Latency,
    throughput and CPU leave out each trainer's first `warmup` steps (detector warm-up and the
    first forest fits, which a fleet started all at once pays all at once)."""
    counters = Counters()
    fleet = [Trainer(i, url, token, bodies, counters, timeout=timeout, retries=retries)
             for i in range(trainers)]  # fmt: skip
    try:
        runs = [await t.register(f"{mode}-{trainers}") for t in fleet]
        rng = random.Random(trainers)
        warmup = min(warmup, steps - 1)
        window = Window(trainers, warmup, server_pid, db_name)
        window.begin = window._mark()
        if warmup == 0:
            window.start = window.begin
        t0 = time.perf_counter()
        # Paced trainers start out of phase, as independent jobs would.
        offsets = [rng.random() if mode == "paced" else 0.0 for _ in fleet]
        await asyncio.gather(*(t.run(steps, paced=mode == "paced", start=t0 + off,
                                     resend=resend, window=window)
                               for t, off in zip(fleet, offsets, strict=True)))  # fmt: skip
    finally:
        for t in fleet:
            await t.close()
    logs = [t.log for t in fleet if t.log is not None]
    assert window.end is not None
    if window.start is None or window.start[0] >= window.end[0]:
        # A trainer finished before the last one was past its warm-up (the fleet stalled):
        # measure the whole run instead.
        print(f"  ({mode} {trainers}: no stretch with every trainer busy and warmed up; "
              "figures over the whole run, warm-up included)", flush=True)  # fmt: skip
        window.start, warmup = window.begin, 0
    latency = {}
    for phase in PHASES:
        values = [v for log in logs for s, v in log.latencies[phase] if s >= warmup]
        latency[phase] = {"p50": percentile(values, 50) * 1e3, "p99": percentile(values, 99) * 1e3,
                          "max": max(values, default=float("nan")) * 1e3, "n": len(values)}  # fmt: skip
    (w0, cpu0), (w1, cpu1) = window.start, window.end
    wall = w1 - w0
    rollouts = sum(1 for log in logs for _, at in log.rollouts_done if w0 < at <= w1)
    cpu = cpu_split(cpu0, cpu1)
    cpu["steps"] = rollouts
    accounting = check_exactly_once(db_url, runs, steps, bodies.samples)
    return LoadResult(
        mode=mode, trainers=trainers, steps=steps, samples=bodies.samples, wall_s=wall,
        reports_per_s=rollouts / wall, rows_per_s=rollouts * bodies.samples / wall,
        latency_ms=latency,
        error_answers={str(k): v for k, v in sorted(counters.error_answers.items())},
        transport_errors=counters.transport_errors,
        failed_reports=sum(len(log.failed) for log in logs),
        resent=sum(log.resent for log in logs),
        resend_mismatches=sum(log.resend_mismatches for log in logs),
        accounting=accounting, cpu_s=cpu,
    )  # fmt: skip


# ---------------------------------------------------------------- floor


def copy_floor(db_url: str, run_id: str, bodies: Bodies, reports: int) -> list[float]:
    """The same rollout rows with raw COPY, one transaction per report (plus its step row)."""
    from ingest import bench_copy_floor

    rng = random.Random(5)
    batches = [make_samples(bodies.samples, rng) for _ in range(min(reports, 8))]
    batches = [batches[k % len(batches)] for k in range(reports)]
    return bench_copy_floor(db_url, run_id, batches, 0)


# ---------------------------------------------------------------- main


def print_header() -> None:
    print(f"{'mode':>6} {'trainers':>8} {'reports/s':>9} {'rows/s':>9} "
          f"{'roll p50':>8} {'roll p99':>8} {'upd p50':>8} {'upd p99':>8} "
          f"{'errors':>7} {'failed':>6} {'stored':>11} {'exactly once':>12}")  # fmt: skip


def print_row(r: LoadResult) -> None:
    lat = r.latency_ms
    errors = sum(r.error_answers.values()) + r.transport_errors
    a = r.accounting
    verdict = "yes" if a.exactly_once else (f"NO: {a.missing} lost, {a.duplicated} dup, "
                                            f"{a.unexpected} extra, {a.bad_sample_counts} bad")  # fmt: skip
    print(f"{r.mode:>6} {r.trainers:>8} {r.reports_per_s:>9.1f} {r.rows_per_s:>9.0f} "
          f"{lat['rollout']['p50']:>8.1f} {lat['rollout']['p99']:>8.1f} "
          f"{lat['update']['p50']:>8.1f} {lat['update']['p99']:>8.1f} "
          f"{errors:>7} {r.failed_reports:>6} {a.stored_reports:>5}/{a.expected_reports:<5} "
          f"{verdict:>12}", flush=True)  # fmt: skip


def print_cpu(results: list[LoadResult]) -> None:
    """Where the CPU went, per step (a rollout and an update report), and how busy the machine
    was, by us and by everything else running on it."""
    print("CPU per step (rollout + update), ms; machine busy in % of all its cores:")
    print(f"{'mode':>6} {'trainers':>8} {'server':>8} {'postgres':>8} {'generator':>9} "
          f"{'busy':>6} {'others':>6} {'busiest server process':>22}")  # fmt: skip
    for r in results:
        if not r.cpu_s:
            continue
        c, steps = r.cpu_s, max(1, int(r.cpu_s.get("steps", r.trainers * r.steps)))
        total = c["machine_total"] or 1.0
        print(f"{r.mode:>6} {r.trainers:>8} {c['server'] / steps * 1e3:>8.1f} "
              f"{c['postgres'] / steps * 1e3:>8.1f} {c['generator'] / steps * 1e3:>9.1f} "
              f"{c['machine_busy'] / total:>6.0%} {c['others'] / total:>6.0%} "
              f"{c['server_busiest_share']:>22.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--modes", nargs="+", choices=["paced", "flat"], default=["paced", "flat"])
    parser.add_argument("--steps", type=int, default=30, help="steps per trainer")
    parser.add_argument("--samples", type=int, default=1024, help="samples per rollout report")
    parser.add_argument("--warmup", type=int, default=5,
                        help="first steps of each trainer left out of latency, throughput, CPU")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="RLKEEL_DB_POOL_SIZE per worker (default: the server's)")  # fmt: skip
    parser.add_argument("--resend", type=float, default=0.02,
                        help="share of reports sent a second time after their verdict")  # fmt: skip
    parser.add_argument("--floor-reports", type=int, default=40)
    parser.add_argument("--url", help="an already running server (with --database-url)")
    parser.add_argument("--database-url", help="its database (for the accounting)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    db = None
    server = None
    try:
        if args.url:
            url, db_url = args.url, args.database_url
            if not db_url:
                parser.error("--url needs --database-url")
            print(f"server: {url} (already running)")
        else:
            db = BenchDatabase.create()
            db_url = db.url
            env = {"RLKEEL_DB_POOL_SIZE": str(args.pool_size)} if args.pool_size else {}
            server = ServerProcess(db_url, workers=args.workers, extra_env=env)
            assert server.proc is not None
            wait_for_workers(server.proc.pid, args.workers)
            url = server.url
            print(f"server: `rlkeel serve --workers {args.workers}` on PostgreSQL 127.0.0.1 "
                  f"(a fresh database){', pool ' + str(args.pool_size) if args.pool_size else ''}")  # fmt: skip
        token = create_token(db_url, role="trainer")
        bodies = Bodies(args.samples)
        print(f"{args.samples} samples per rollout report, {args.steps} steps per trainer "
              f"(the first {args.warmup} not measured), resend {args.resend:.0%}; latency in "
              "ms, first send to verdict; throughput while every trainer is busy")  # fmt: skip

        floor_run = asyncio.run(_register_floor_run(url, token))
        floor = copy_floor(db_url, floor_run, bodies, args.floor_reports)
        f50, f99 = percentile(floor, 50) * 1e3, percentile(floor, 99) * 1e3
        print(f"floor (raw COPY of one report's rows, one writer): p50 {f50:.1f} ms, "
              f"p99 {f99:.1f} ms, {1e3 / f50:.1f} reports/s")  # fmt: skip

        results = []
        print_header()
        for mode in args.modes:
            for n in args.trainers:
                r = asyncio.run(run_load(
                    url, token, db_url, trainers=n, steps=args.steps, mode=mode, bodies=bodies,
                    resend=args.resend, server_pid=server.proc.pid if server and server.proc else None,
                    db_name=db_url.rpartition("/")[2], warmup=args.warmup,
                ))  # fmt: skip
                print_row(r)
                results.append(r)
        print_cpu(results)
        print("ratios to the floor (rollout p50 / p99, flat throughput):")
        for r in results:
            lat = r.latency_ms["rollout"]
            extra = (f", throughput {r.reports_per_s / (1e3 / f50):.2f}x the one-writer floor"
                     if r.mode == "flat" else "")  # fmt: skip
            print(
                f"  {r.mode} {r.trainers}: {lat['p50'] / f50:.1f} / {lat['p99'] / f99:.1f}{extra}"
            )
        print("targets: paced 32 trainers with no error, no loss, p99 rollout <= 100 ms; "
              "flat out >= 50 reports/s")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(
                {"machine": machine(), "floor_ms": {"p50": f50, "p99": f99},
                 "results": [asdict(r) | {"ok": r.ok} for r in results]}, indent=2))  # fmt: skip
        if not all(r.ok for r in results):
            raise SystemExit("some reports were lost, duplicated or never got a verdict")
    finally:
        if server is not None:
            server.stop()
        if db is not None:
            db.drop()


async def _register_floor_run(url: str, token: str) -> str:
    async with AsyncClient(url, token=token) as rk:
        run = await rk.register_run(name="load-floor", algorithm="grpo", model={"name": "floor"})
        return run.id


if __name__ == "__main__":
    main()
