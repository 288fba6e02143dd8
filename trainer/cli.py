"""``rlkeel train``: a local run, no service needed. Also ``python -m rlkeel.trainer`` (and so
``torchrun --nproc_per_node 2 -m rlkeel.trainer ...``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from rlkeel.trainer.config import (
    AUTOMATION_MODES,
    LR_SCHEDULES,
    POSITIVE_EMPHASIS_MODES,
    TrainConfig,
)

_DEFAULTS = TrainConfig()


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = _DEFAULTS
    p.add_argument("--algorithm", default=d.algorithm,
                   help="ppo, grpo, dapo, gspo, gspo_token, dr_grpo, cispo")
    p.add_argument("--task", default=d.task, help="addition, reverse, sort")
    p.add_argument("--task-options", type=json.loads, default={}, metavar="JSON",
                   help='task constructor arguments, e.g. \'{"digits": 1}\'')
    p.add_argument("--model", default=d.model, help="builtin-tiny, builtin-small or hf:<name>")
    p.add_argument("--model-options", type=json.loads, default={}, metavar="JSON")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--group-size", type=int, default=d.group_size)
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--ppo-epochs", type=int, default=d.ppo_epochs)
    p.add_argument("--minibatches", type=int, default=d.minibatches)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--advantage-estimator", default=None, help="gae, grpo, dr_grpo, rloo")
    p.add_argument("--clip-eps-low", type=float, default=None)
    p.add_argument("--clip-eps-high", type=float, default=None)
    p.add_argument("--kl-coef", type=float, default=d.kl_coef)
    p.add_argument("--kl-estimator", choices=("k1", "k2", "k3"), default=d.kl_estimator)
    p.add_argument("--dynamic-sampling", type=_bool, default=None, metavar="BOOL",
                   help="DAPO dynamic sampling (default: on for dapo)")
    p.add_argument("--overlong-filter", type=_bool, default=None, metavar="BOOL",
                   help="mask truncated samples (default: on for dapo)")
    p.add_argument("--overlong-buffer", type=int, default=d.overlong_buffer,
                   help="soft overlong punishment buffer in tokens (0 = off)")
    p.add_argument("--positive-emphasis", choices=POSITIVE_EMPHASIS_MODES,
                   default=d.positive_emphasis)
    p.add_argument("--positive-factor", type=float, default=d.positive_factor)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--lam", type=float, default=d.lam)
    p.add_argument("--vf-clip", type=float, default=d.vf_clip)
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="start from a random policy instead of the supervised warm start")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--out", dest="out_dir", default="runs/latest",
                   help="output directory (metrics.jsonl, checkpoints/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--inject", action="append", default=[], metavar="KIND@STEP[:STRENGTH]",
                   help="TESTING TOOL: break the run on purpose at STEP (repeatable): "
                   "length_explosion, kl_spike, lr_blowup, sparse_rewards")
    svc = p.add_argument_group("the service (closed loop; without --server the run is local)")
    svc.add_argument("--server", dest="server_url", default=os.environ.get("RLKEEL_SERVER_URL"),
                     metavar="URL", help="rlkeel service URL (env RLKEEL_SERVER_URL)")
    svc.add_argument("--token", default=os.environ.get("RLKEEL_TOKEN"),
                     help="API key with the trainer role (env RLKEEL_TOKEN)")
    svc.add_argument("--verdict-timeout", dest="verdict_timeout_s", type=float,
                     default=d.verdict_timeout_s, metavar="SECONDS",
                     help="wait this long for a rollout verdict, then local guards decide")
    svc.add_argument("--spool-dir", default=None,
                     help="where reports wait while the service is away (default OUT/spool)")
    svc.add_argument("--spool-max-mb", type=float, default=d.spool_max_mb,
                     help="bound of the report spool on disk")
    svc.add_argument("--run-name", default=None, help="the run's name in the service")
    svc.add_argument("--mode", choices=AUTOMATION_MODES, default=d.mode,
                     help="automation mode: auto (commands apply), approve (held for an "
                          "operator), observe (findings only)")
    svc.add_argument("--guard-max-length", type=int, default=None, metavar="TOKENS",
                     help="local guard without a verdict: drop responses that hit this many "
                          "tokens without ending (default: the max new tokens)")
    return p


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Mount ``train`` on the top-level ``rlkeel`` parser."""
    p = subparsers.add_parser("train", help="train a policy with RL (with --server: watched by the service)",
                              description="Train a policy with RL on a built-in task.")  # fmt: skip
    configure_parser(p)
    p.set_defaults(handler=run_train)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def run_train(args: argparse.Namespace) -> int:
    from rlkeel.trainer import distributed as dist
    from rlkeel.trainer.loop import Trainer

    config = config_from_args(args)
    if config.server_url and not config.token:
        raise SystemExit("rlkeel train: --server needs --token (or RLKEEL_TOKEN)")
    trainer = Trainer(config)
    trainer.show_progress = args.progress
    link = None
    try:
        if args.resume and trainer.resume_latest() and dist.is_main():
            print(f"resumed at step {trainer.step}", file=sys.stderr)
        if config.server_url and dist.is_main():
            from rlkeel.trainer.monitor import ServiceLink

            link = ServiceLink.from_config(config)
            try:
                run_id = link.attach(trainer, name=config.run_name, mode=config.mode)
            except BaseException:
                link.close()  # a refusal (bad token, bad fields) ends the run before it starts
                raise
            print(f"run {run_id or '(not registered yet)'} at {config.server_url}", file=sys.stderr)
            if config.checkpoint_every <= 0:
                print("note: no --checkpoint-every: the service's rollback commands will be "
                      "rejected (nothing to roll back to)", file=sys.stderr)  # fmt: skip
        try:
            history = trainer.run()
        except BaseException as exc:
            if link is not None:
                link.finish("failed", f"{type(exc).__name__}: {exc}"[:2000], timeout=10.0)
                link = None
            raise
        if link is not None:
            stopped = trainer.stop_reason is not None
            link.finish("stopped" if stopped else "finished", trainer.stop_reason)
        if dist.is_main():
            last = history[-1] if history else {}
            summary = {k: last.get(k) for k in ("reward_mean", "positive_frac", "kl_mean",
                                                 "entropy_mean", "length_mean")}  # fmt: skip
            print(json.dumps({"steps": trainer.step, "algorithm": trainer.algorithm,
                              "stop_reason": trainer.stop_reason, "last": summary,
                              "out": config.out_dir, "run_id": link.run_id if link else None},
                             allow_nan=True))  # fmt: skip
        # No rank tears the group down while another still works in it (rank 0 saved the last
        # checkpoint and printed): a gloo rank whose peer closed early could abort at exit
        # ("terminate called without an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(
        prog="python -m rlkeel.trainer", description="Train a policy with RL on a built-in task."))  # fmt: skip
    return run_train(parser.parse_args(argv))
