"""What monitoring costs a training step: step time of the built-in model with the service
attached versus the same run without it, and what the difference is made of.

The floor is the trainer alone (no hooks), measured in the same invocation; the attached run
is the same config (GRPO on ``sort``, warm-started tiny model, 8 prompts × 8 samples, CPU,
one torch thread) linked with ``rlkeel.trainer.monitor.ServiceLink`` to ``rlkeel serve`` in its
own process (SQLite by default) in ``observe`` mode, so both runs do the same work. Each step's
wall time is taken around ``Trainer.train_step``; inside the attached run the hooks are timed
too (the rollout hook waits for the verdict; the update hook only queues). With ``--profile``
py-spy samples the trainer and the server while the attached run trains and the top frames
are printed.

    python bench/overhead.py
    python bench/overhead.py --steps 60 --profile
    python bench/overhead.py --database-url postgresql://postgres@127.0.0.1:5432/rlkdemo_bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, percentile  # noqa: E402

from rlkeel.cli.demo import attach, demo_config  # noqa: E402
from rlkeel.cli.embedded import EmbeddedService  # noqa: E402
from rlkeel.client import Client  # noqa: E402
from rlkeel.trainer.loop import Trainer  # noqa: E402


def timed_steps(trainer: Trainer, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        trainer.train_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def time_hooks(trainer: Trainer) -> dict[str, list[float]]:
    spent: dict[str, list[float]] = {"on_rollout": [], "on_update": []}
    for name in spent:
        hook = getattr(trainer, name)

        def wrapped(report: Any, _hook: Any = hook, _name: str = name) -> Any:
            t0 = time.perf_counter()
            try:
                return _hook(report)
            finally:
                spent[_name].append(time.perf_counter() - t0)

        setattr(trainer, name, wrapped)
    return spent


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        print("(py-spy not found: no profile)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "200", "--format", "raw", "--output", str(out),
                             "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


# Plumbing that sits on every stack (threads, event loops, module dispatch): not informative.
_GENERIC_FILES = {"threading.py", "_asyncio.py", "runners.py", "base_events.py", "_compat.py",
                  "<frozen runpy>", "main.py", "server_commands.py", "server.py", "module.py",
                  "_contextlib.py", "selector_events.py", "selectors.py", "thread.py",
                  "cli.py", "overhead.py", "<string>", "anyio", "to_thread.py",
                  "concurrency.py", "routing.py", "applications.py", "middleware",
                  "exceptions.py", "errors.py", "base.py", "asyncio.py", "h11_impl.py",
                  "proxy_headers.py", "body_limit.py", "__init__.py"}  # fmt: skip


def top_frames(raw: Path, n: int = 12, *, inclusive: bool = False) -> list[tuple[str, float]]:
    """The most sampled frames of a py-spy raw (collapsed) profile, as shares of all samples:
    the leaf frame (self time) or, with ``inclusive``, every frame on the stack once."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")]  # fmt: skip
        if inclusive:
            for f in set(frames):
                if f.rsplit(" (", 1)[-1] not in _GENERIC_FILES:
                    counts[f] += c
        else:
            counts[frames[-1]] += c
    return [(f, c / total) for f, c in counts.most_common(n)] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--database-url", help="default: a SQLite file in a temp directory")
    parser.add_argument("--profile", action="store_true", help="py-spy the attached run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    total = args.warmup + args.steps
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="rlkeel-overhead-") as tmp:
        base = demo_config(Path(tmp) / "alone", inject=[], steps=total, seed=0)
        base.checkpoint_every = 0  # the same work in both runs: monitoring only
        alone = timed_steps(Trainer(base), args.warmup, args.steps)

        with EmbeddedService(Path(tmp) / "svc", database_url=args.database_url) as service, \
                Client(service.url, token=service.operator_token) as op:  # fmt: skip
            cfg = demo_config(Path(tmp) / "attached", inject=[], steps=total, seed=0)
            cfg.checkpoint_every = 0
            trainer = Trainer(cfg)
            link = attach(trainer, service, op, name="overhead", mode="observe",
                          project="bench", verdict_timeout_s=2.0)  # the default deadline  # fmt: skip
            hooks = time_hooks(trainer)
            spies = []
            if args.profile:
                est = statistics.median(alone) * total * 3 + 5
                server_pid = service._process.proc.pid  # type: ignore[union-attr]
                for who, pid in (("trainer", os.getpid()), ("server", server_pid)):
                    raw = Path(tmp) / f"{who}.txt"
                    spy = py_spy(pid, est, raw)
                    if spy is not None:
                        spies.append((who, spy, raw))
                time.sleep(1.0)  # py-spy attaches
            attached = timed_steps(trainer, args.warmup, args.steps)
            local = link.local_verdicts
            link.finish("finished")
            for _, spy, _ in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(timeout=60)
            backend = "SQLite" if service.settings.is_sqlite else "PostgreSQL"

        print(f"run: GRPO on sort, builtin-tiny, 8 prompts × 8 samples, max 16 new tokens, "
              f"{args.steps} steps after {args.warmup} warm-up; service: rlkeel serve on "
              f"{backend}, observe mode, its own process")  # fmt: skip
        print(f"{'':<26} {'median ms':>10} {'p99 ms':>8}")
        for name, xs in (("step, trainer alone", alone), ("step, service attached", attached)):
            print(f"{name:<26} {1e3 * statistics.median(xs):>10.1f} {1e3 * percentile(xs, 99):>8.1f}")
        for name in ("on_rollout", "on_update"):
            xs = hooks[name][-args.steps:]
            print(f"  {name + ' hook':<24} {1e3 * statistics.median(xs):>10.1f} "
                  f"{1e3 * percentile(xs, 99):>8.1f}")  # fmt: skip
        ratio = statistics.median(attached) / statistics.median(alone)
        ratio99 = percentile(attached, 99) / percentile(alone, 99)
        print(f"ratio to the floor (trainer alone): median {ratio:.2f}, p99 {ratio99:.2f}; "
              f"rollouts decided by the local guards (verdict late): {local}")  # fmt: skip
        for who, _, raw in spies:
            if raw.exists():
                print(f"\npy-spy, {who}: most sampled frames, inclusive (share of samples)")
                for frame, share in top_frames(raw, 14, inclusive=True):
                    print(f"  {share:6.1%}  {frame}")
                print(f"py-spy, {who}: self time")
                for frame, share in top_frames(raw, 8):
                    print(f"  {share:6.1%}  {frame}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
