"""Does rlkeel save runs? Each injected fault, and a healthy run, over N seeds, with the
service in ``auto`` mode (commands go out) and in ``observe`` mode (the same run, findings
only): collapse rate and final task success.

A run is the demo's (GRPO on ``sort``, warm-started tiny model, 8 × 8 samples, CPU,
checkpoints every step) against an embedded service on SQLite. Task success is the greedy
exact-match rate on 200 held-out prompts with the *true* reward (not the injected one),
measured on the warm-started model and on the model the run ends with. A run **collapsed**
when its final success is under half its initial success, or its weights are non-finite.

Target: auto prevents ≥ 80% of the collapses observe suffers (paired by seed); on healthy
seeds auto issues no command and loses no success.

    python bench/efficacy.py                         # 3 seeds, every scenario
    python bench/efficacy.py --seeds 5 --scenarios healthy lr_blowup
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from rlkeel.cli.demo import DEMO_POLICY, attach, demo_config  # noqa: E402
from rlkeel.cli.embedded import EmbeddedService  # noqa: E402
from rlkeel.client import Client  # noqa: E402
from rlkeel.trainer.loop import Trainer  # noqa: E402
from rlkeel.trainer.tasks.warmup import evaluate_success  # noqa: E402

ONSET = 30
SCENARIOS: dict[str, list[str]] = {
    "healthy": [],
    "length_explosion": [f"length_explosion@{ONSET}"],
    "kl_spike": [f"kl_spike@{ONSET}"],
    "lr_blowup": [f"lr_blowup@{ONSET}"],
    "sparse_rewards": [f"sparse_rewards@{ONSET}"],
}
COLLAPSE_SHARE = 0.5


def finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def one_run(service: EmbeddedService, scenario: str, seed: int, mode: str, steps: int,
            workdir: Path, policy: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    config = demo_config(workdir / f"{scenario}-{seed}-{mode}", inject=SCENARIOS[scenario],
                         steps=steps, seed=seed)  # fmt: skip
    with Client(service.url, token=service.operator_token) as op:
        trainer = Trainer(config)
        link = attach(trainer, service, op, name=f"{scenario}-{seed}-{mode}", mode=mode,
                      project="efficacy", policy=policy)  # fmt: skip
        task = trainer.task.inner if hasattr(trainer.task, "inner") else trainer.task
        initial = evaluate_success(trainer.model, trainer.tokenizer, task, n=200)
        started = time.perf_counter()
        try:
            trainer.run()
        finally:
            link.finish("stopped" if trainer.stop_reason else "finished", trainer.stop_reason)
        seconds = time.perf_counter() - started
        ok = finite_weights(trainer.model)
        final = evaluate_success(trainer.model, trainer.tokenizer, task, n=200) if ok else 0.0
        commands = op.list_commands(link.run_id, limit=1000)
        steps_stored = list(op.iter_steps(link.run_id, phase="rollout", page_size=1000))
    return {
        "scenario": scenario, "seed": seed, "mode": mode, "initial": initial, "final": final,
        "collapsed": (not ok) or final < COLLAPSE_SHARE * initial,
        "commands": [c.kind.value for c in commands],
        "drops": sum(len(s.verdict.drop) for s in steps_stored),
        "skips": sum(1 for s in steps_stored if s.verdict.skip_step),
        "stopped": trainer.stop_reason is not None, "seconds": seconds,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--default-policy", action="store_true",
                        help="the service's default policy (else the demo's, with sample_kl_z's "
                        "scale floor widened; see cli/demo.py)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = None if args.default_policy else DEMO_POLICY
    load = os.getloadavg()
    print(f"machine: {machine()}; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"runs: GRPO on sort, {args.steps} steps, faults at step {ONSET}, seeds "
          f"0..{args.seeds - 1}, policy: {'default' if policy is None else 'demo'}")  # fmt: skip
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlkeel-efficacy-") as tmp:
        with EmbeddedService(Path(tmp)) as service:
            for scenario in args.scenarios:
                for seed in range(args.seeds):
                    for mode in ("observe", "auto"):
                        r = one_run(service, scenario, seed, mode, args.steps, Path(tmp), policy)
                        results.append(r)
                        cmds = Counter(r["commands"])
                        print(f"  {scenario:<17} seed {seed} {mode:<7} success {r['initial']:.3f}"
                              f" → {r['final']:.3f} {'COLLAPSED' if r['collapsed'] else 'ok':<9} "
                              f"drops {r['drops']:>4} skips {r['skips']:>3} "
                              f"commands {dict(cmds) or '-'}{' (stopped)' if r['stopped'] else ''}"
                              f" [{r['seconds']:.0f} s]", flush=True)  # fmt: skip
    print()
    print(f"{'scenario':<17} {'observe collapse':>16} {'auto collapse':>13} "
          f"{'final success observe / auto':>29} {'prevented':>9}  auto commands")  # fmt: skip
    prevented_total = observed_total = 0
    for scenario in args.scenarios:
        obs = [r for r in results if r["scenario"] == scenario and r["mode"] == "observe"]
        auto = [r for r in results if r["scenario"] == scenario and r["mode"] == "auto"]
        pairs = list(zip(obs, auto, strict=True))
        observed = sum(o["collapsed"] for o in obs)
        prevented = sum(o["collapsed"] and not a["collapsed"] for o, a in pairs)
        prevented_total += prevented
        observed_total += observed
        cmds = Counter(k for a in auto for k in a["commands"])
        print(f"{scenario:<17} {observed:>9}/{len(obs):<6} {sum(a['collapsed'] for a in auto):>6}/"
              f"{len(auto):<6} {statistics.mean(o['final'] for o in obs):>14.3f} / "
              f"{statistics.mean(a['final'] for a in auto):<12.3f} "
              f"{f'{prevented}/{observed}' if observed else '-':>9}  {dict(cmds) or '-'}")  # fmt: skip
    print()
    share = prevented_total / observed_total if observed_total else math.nan
    print(f"auto prevented {prevented_total} of the {observed_total} collapses observe suffered"
          f" ({share:.0%}; target ≥ 80%)" if observed_total else
          "observe suffered no collapse: nothing to prevent")  # fmt: skip
    healthy = [r for r in results if r["scenario"] == "healthy"]
    if healthy:
        auto = [r for r in healthy if r["mode"] == "auto"]
        obs = [r for r in healthy if r["mode"] == "observe"]
        n_cmd = sum(len(r["commands"]) for r in auto)
        lost = statistics.mean(o["final"] - a["final"] for o, a in zip(obs, auto, strict=True))
        print(f"healthy seeds: auto issued {n_cmd} command(s) (target 0); final success auto − "
              f"observe {-lost:+.3f} on average (target ≥ 0 within noise: ±{1.96 * 0.5 / math.sqrt(200):.3f}"
              " per measurement)")  # fmt: skip
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
