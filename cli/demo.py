"""``rlkeel demo``: the whole loop in one command, on CPU, in about a minute.

A service on a SQLite file in a temporary directory, keys, a short GRPO run on the built-in
model with an injected instability (``lr_blowup`` by default: the learning rate ×30 at step
30), live progress, the service detecting and intervening, and a summary table of findings
and commands with the path of an HTML report.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

__all__ = ["register", "run_demo"]

DEFAULT_INJECT = "lr_blowup@30"
DEMO_POLICY: dict[str, Any] = {"detectors": {"sample_kl_z": {"params": {"mad_floor": 1.0}}}}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "demo", help="see it work: service + a short GRPO run with an injected instability",
        description="Start a service on a SQLite file in a temporary directory, train a short "
        "GRPO run on CPU with an injected instability, and watch the service detect it and "
        "intervene. Needs the server, trainer and report extras (pip install 'rlkeel[all]').",
    )  # fmt: skip
    p.add_argument("--inject", action="append", default=None, metavar="KIND@STEP[:STRENGTH]",
                   help=f"the instability (repeatable; default {DEFAULT_INJECT}): "
                   "length_explosion, kl_spike, lr_blowup, sparse_rewards")  # fmt: skip
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("auto", "observe"), default="auto",
                   help="observe: the same run with findings only, no interventions")
    p.add_argument("--dir", help="working directory (default: a new temporary one, kept)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    missing = []
    for module, extra in (("fastapi", "server"), ("torch", "trainer"), ("matplotlib", "report")):
        try:
            __import__(module)
        except ImportError:
            missing.append(extra)
    if missing:
        print(f"rlkeel demo needs the {', '.join(missing)} extra(s): pip install 'rlkeel[all]'",
              file=sys.stderr)  # fmt: skip
        return 2
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rlkeel-demo-"))
    summary = run_demo(directory, inject=args.inject or [DEFAULT_INJECT], steps=args.steps,
                       seed=args.seed, mode=args.mode)  # fmt: skip
    return 0 if summary["steps"] > 0 else 1


def demo_config(directory: Path, *, inject: list[str], steps: int, seed: int) -> Any:
    """The demo run: GRPO on ``sort`` (the warm-started tiny model solves ~70% of it, so
    rewards have spread in every group), a frozen reference for the KL, checkpoints every step
    (rollbacks land exactly)."""
    from rlkeel.trainer.config import TrainConfig

    return TrainConfig(algorithm="grpo", task="sort", steps=steps, seed=seed, group_size=8,
                       prompts_per_step=8, max_new_tokens=16, lr=1e-4, use_reference=True,
                       checkpoint_every=1, keep_checkpoints=40, out_dir=str(directory / "run"),
                       device="cpu", inject=list(inject))  # fmt: skip


def run_demo(directory: Path, *, inject: list[str], steps: int = 60, seed: int = 0,
             mode: str = "auto", out: TextIO | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the demo in ``directory``; prints as it goes and returns a summary dict (steps,
    findings and commands by kind, report path, final metrics, seconds)."""
    import torch

    from rlkeel.cli.embedded import EmbeddedService
    from rlkeel.cli.report import write_report
    from rlkeel.cli.report.data import from_api
    from rlkeel.client import Client
    from rlkeel.trainer.loop import Trainer

    out = out or sys.stdout
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model: threads only add contention on a small box

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"rlkeel demo — working directory {directory}")
    try:
        with EmbeddedService(directory) as service, \
                Client(service.url, token=service.operator_token) as op:  # fmt: skip
            say(f"  service on {service.url} (SQLite {directory / 'rlkeel.sqlite'}), "
                "trainer and operator keys created")  # fmt: skip
            config = demo_config(directory, inject=inject, steps=steps, seed=seed)
            say("  warm start (a few seconds the first time, then cached)...")
            trainer = Trainer(config)
            link = attach(trainer, service, op, name=f"demo-grpo-sort-{mode}", mode=mode,
                          project="demo", say=say)  # fmt: skip
            say(f"  run {link.run_id}: GRPO on 'sort', {steps} steps, automation {mode}, "
                f"injected: {', '.join(inject)} (a testing tool)")  # fmt: skip
            say()
            say(f"  {'step':>4}  {'reward':>6}  {'KL':>7}  {'length':>6}  {'entropy':>7}  "
                f"{'lr':>8}  service")  # fmt: skip
            try:
                trainer.run()
            finally:
                link.finish("stopped" if trainer.stop_reason else "finished", trainer.stop_reason)
            history = from_api(op, link.run_id)
            report = write_report(history, directory / "report")
            summary = _summary(history, trainer, report, time.perf_counter() - started)
            _print_summary(summary, history, say)
            return summary
    finally:
        torch.set_num_threads(threads)


def attach(trainer: Any, service: Any, operator: Any, *, name: str, mode: str, project: str,
           say: Any = None, policy: dict[str, Any] | None = DEMO_POLICY,
           verdict_timeout_s: float = 30.0) -> Any:  # fmt: skip
    """Link ``trainer`` to ``service`` (``rlkeel.trainer.monitor.ServiceLink``), register its
    run in ``mode`` with ``policy``, and, with ``say``, print progress and interventions.

    The verdict deadline is generous: the demo and the benchmarks measure what the service
    decides, not the local guards that stand in when it is late."""
    from rlkeel.trainer.monitor import ServiceLink

    link = ServiceLink(service.url, service.trainer_token, verdict_timeout_s=verdict_timeout_s,
                       spool_dir=Path(trainer.config.out_dir or ".") / "spool")  # fmt: skip
    link.attach(trainer, name=name, project=project, mode=mode)
    if link.run_id is None:
        raise RuntimeError(f"the service at {service.url} did not register the run")
    if policy:
        operator.put_policy(link.run_id, policy)
    if say is not None:
        Progress(link, operator, say).install(trainer)
    return link


class Progress:
    """Wraps the link's hooks to print one line per step (reward, KL, length, entropy, lr and
    the verdict) and each command as it arrives and as the trainer applies it."""

    def __init__(self, link: Any, operator: Any, say: Any) -> None:
        self.link, self.operator, self.say = link, operator, say
        self.note = ""

    def install(self, trainer: Any) -> None:
        on_rollout, on_update, on_command = trainer.on_rollout, trainer.on_update, trainer.on_command

        def rollout(report: Any) -> Any:
            verdict = on_rollout(report)
            if verdict.skip_step:
                self.note = "skip step"
            elif verdict.drop:
                self.note = f"drop {len(verdict.drop)}"
            else:
                self.note = ""
            if getattr(self.link, "_last_local", False):
                self.note += " (local guards: no verdict in time)"
            self._announce(verdict.commands)
            return verdict

        def update(report: Any) -> Any:
            m = report.metrics
            self.say(f"  {report.step:>4}  {_num(m.get('reward_mean'), 6, 3)}  "
                     f"{_num(m.get('kl_mean'), 7, 4)}  {_num(m.get('length_mean'), 6, 1)}  "
                     f"{_num(m.get('entropy_mean'), 7, 3)}  {_num(m.get('lr'), 8, 2, 'e')}  "
                     f"{self.note}")  # fmt: skip
            commands = on_update(report)
            self._announce(commands)
            return commands

        def command(cmd: Any, status: str, detail: str) -> None:
            self.say(f"        ↳ trainer: {cmd.kind} {status} ({detail})")
            on_command(cmd, status, detail)

        trainer.on_rollout, trainer.on_update, trainer.on_command = rollout, update, command

    def _announce(self, commands: list[Any]) -> None:
        for c in commands:
            why = ""
            if c.id is not None:
                found = self.operator.list_commands(self.link.run_id, after=int(c.id) - 1, limit=1)
                if found:
                    why = " — " + str((found[0].reason or {}).get("text", ""))
            self.say(f"        ⚑ service: {c.kind} {c.params}{why}")


def _num(value: Any, width: int, digits: int, style: str = "f") -> str:
    if value is None:
        return f"{'—':>{width}}"
    v = float(value)
    if not math.isfinite(v):
        return f"{v!s:>{width}}"
    return f"{v:>{width}.{digits}{style}}"


def _summary(history: Any, trainer: Any, report: Path, seconds: float) -> dict[str, Any]:
    last = trainer.history[-1] if trainer.history else {}
    return {
        "run": history.run.id, "steps": trainer.step, "stop_reason": trainer.stop_reason,
        "algorithm": trainer.algorithm,
        "findings": dict(Counter(f.detector for f in history.findings)),
        "commands": [(c.kind.value, c.params, c.status.value) for c in history.commands],
        "dropped_samples": history.dropped_samples(), "skipped_steps": history.skipped_steps(),
        "last": {k: last.get(k) for k in ("reward_mean", "kl_mean", "length_mean",
                                          "entropy_mean")},
        "reward_last5": (sum(m["reward_mean"] for m in trainer.history[-5:])
                         / max(1, len(trainer.history[-5:]))),
        "report": str(report), "seconds": seconds,
    }  # fmt: skip


def _print_summary(summary: dict[str, Any], history: Any, say: Any) -> None:
    say()
    say("  findings")
    say(f"    {'detector':<26} {'count':>5}  first at step")
    first: dict[str, int] = {}
    for f in history.findings:
        first.setdefault(f.detector, f.step)
    for name, count in sorted(summary["findings"].items(), key=lambda kv: first[kv[0]]):
        say(f"    {name:<26} {count:>5}  {first[name]}")
    if not summary["findings"]:
        say("    none")
    say("  commands")
    say(f"    {'step':>4}  {'command':<18} {'params':<24} status")
    from rlkeel.cli.report.data import command_step

    for c in history.commands:
        say(f"    {command_step(c)!s:>4}  {c.kind.value:<18} {str(c.params):<24} {c.status.value}")
    if not history.commands:
        say("    none")
    last = summary["last"]
    say(f"  samples dropped {summary['dropped_samples']}, steps skipped "
        f"{summary['skipped_steps']}; ended at step {summary['steps']} on "
        f"{summary['algorithm']}" + (f" (stopped: {summary['stop_reason']})"
                                     if summary["stop_reason"] else ""))  # fmt: skip
    say(f"  last step: reward {_num(last['reward_mean'], 0, 3)}, KL "
        f"{_num(last['kl_mean'], 0, 4)}, length {_num(last['length_mean'], 0, 1)}")  # fmt: skip
    say(f"  report: {summary['report']}")
    say(f"  done in {summary['seconds']:.0f} s")
