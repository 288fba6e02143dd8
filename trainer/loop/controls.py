"""The trainer's public controls (what the closed loop calls), command dispatch and
checkpoints: a mixin of ``Trainer``, kept apart so the step itself reads on one page."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlkeel.trainer import algos
from rlkeel.trainer import checkpoint as ckpt
from rlkeel.trainer import distributed as dist
from rlkeel.trainer.config import INVOCATION_FIELDS, TrainConfig
from rlkeel.trainer.loop.records import PendingCommand, UpdateBatch
from rlkeel.trainer.rollout import RolloutBatch


class TrainerControls:
    """Mixed into ``Trainer``; uses its attributes (model, optimizer, step, ...)."""

    # ------------------------------------------------------------------ public controls
    def switch_algorithm(self, name: str, overrides: dict[str, Any] | None = None) -> None:
        """Switch the loss between steps (e.g. GRPO → GSPO): loss, aggregation, clip range and
        advantage estimator come from the new algorithm's defaults plus ``overrides``
        (``clip_eps_low``, ``clip_eps_high``, ``advantage_estimator``, ``kl_coef``). The
        optimizer and its moments carry over unchanged (ALGORITHMS.md)."""
        algos.algorithm_spec(name)
        overrides = dict(overrides or {})
        estimator = overrides.pop("advantage_estimator", None)
        if "kl_coef" in overrides:
            self.config = replace(self.config, kl_coef=float(overrides.pop("kl_coef")))
        unknown = set(overrides) - {"clip_eps_low", "clip_eps_high"}
        if unknown:
            raise ValueError(f"unknown switch overrides {sorted(unknown)}")
        self.algorithm = name
        self.advantage_estimator = estimator
        self.loss_overrides = overrides
        self.config = replace(self.config, algorithm=name, advantage_estimator=estimator,
                              clip_eps_low=overrides.get("clip_eps_low"),
                              clip_eps_high=overrides.get("clip_eps_high"))  # fmt: skip

    def drop_samples(self, batch: UpdateBatch | RolloutBatch,
                     sample_ids: Iterable[str]) -> Any:  # fmt: skip
        """The sub-batch without ``sample_ids`` (unknown ids are ignored): dropped samples are
        gone from every normaliser of the update."""
        drop = set(sample_ids)
        if not drop:
            return batch
        keep = torch.tensor([sid not in drop for sid in batch.sample_ids], dtype=torch.bool)
        return batch.select(keep)

    def scale_lr(self, factor: float) -> float:
        """Multiply the learning rate (on top of the schedule) by ``factor``; returns the lr."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError("lr factor must be a positive finite number")
        self.lr_scale *= factor
        return self._set_lr()

    def set_max_length(self, tokens: int) -> None:
        """Cap responses at ``tokens`` new tokens from the next rollout on."""
        if tokens < 1:
            raise ValueError("max length must be >= 1")
        self.max_new_tokens = int(tokens)

    def set_positive_emphasis(self, mode: str, factor: float = 1.0) -> None:
        from rlkeel.trainer.config import POSITIVE_EMPHASIS_MODES

        if mode not in POSITIVE_EMPHASIS_MODES:
            raise ValueError(f"mode must be one of {POSITIVE_EMPHASIS_MODES}")
        self.positive_emphasis = (mode, float(factor))

    def stop(self, reason: str = "requested") -> None:
        """End the run after this step boundary; ``run()`` writes a final checkpoint."""
        self.stop_reason = reason

    def rollback(self, to_step: int) -> int:
        """Restore the newest checkpoint at or before ``to_step`` (weights, optimizer, step,
        algorithm, RNG streams); returns the restored step."""
        directory = self.checkpoint_dir
        found = None if directory is None else ckpt.latest_at_or_before(directory, to_step)
        if found is None:
            raise ValueError(f"no checkpoint at or before step {to_step}")
        self.load_checkpoint(found[1])
        return self.step

    def restore_weights(self, to_step: int) -> int:
        """The ``rollback`` command: load the policy, value head and optimizer state of the
        newest checkpoint at or before ``to_step``; returns that checkpoint's step.

        Unlike ``rollback`` (a full rewind, as ``--resume`` does), the step counter, the lr
        schedule position, the prompt stream and the sampling generator keep going forward, and
        the controls the service set since (algorithm, lr scale, emphasis, max length) stay in
        force. Steps reported to the service are never reused, so its history stays one row per
        step; and the restored policy meets fresh prompts instead of replaying, with the same
        random draws, the trajectory that went wrong."""
        directory = self.checkpoint_dir
        found = None if directory is None else ckpt.latest_at_or_before(directory, to_step)
        if found is None:
            raise ValueError(f"no checkpoint at or before step {to_step}")
        state = ckpt.load_checkpoint(found[1], map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._set_lr()  # the optimizer's saved lr is the old one: the current schedule rules
        return int(state["step"])

    # ------------------------------------------------------------------ commands
    def queue_commands(self, commands: Iterable[Any]) -> None:
        self.pending_commands.extend(PendingCommand.from_any(c) for c in commands)

    def apply_due_commands(self) -> list[tuple[PendingCommand, str, str]]:
        """Apply queued commands due at this boundary, in order; each ends applied, rejected
        (bad parameters) or failed, and is reported to ``on_command``."""
        due = [c for c in self.pending_commands
               if c.effective_step is None or c.effective_step <= self.step]  # fmt: skip
        self.pending_commands = [c for c in self.pending_commands if c not in due]
        results = []
        for cmd in due:
            try:
                detail = self.apply_command(cmd)
                status = "applied"
            except (ValueError, KeyError, TypeError) as exc:
                status, detail = "rejected", str(exc)
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the run
                status, detail = "failed", f"{type(exc).__name__}: {exc}"
            results.append((cmd, status, detail))
            if dist.is_main() and self.on_command is not None:
                self.on_command(cmd, status, detail)
        return results

    def apply_command(self, cmd: PendingCommand) -> str:
        p = cmd.params
        if cmd.kind == "skip_step":
            self.skip_next_step = True
            return "next step skipped"
        if cmd.kind == "switch_algorithm":
            self.switch_algorithm(p["to"], p.get("overrides"))
            return f"algorithm {self.algorithm}"
        if cmd.kind == "positive_emphasis":
            self.set_positive_emphasis(p["mode"], float(p.get("factor", 2.0)))
            return f"positive emphasis {p['mode']}"
        if cmd.kind == "scale_lr":
            return f"lr {self.scale_lr(float(p['factor'])):.3g}"
        if cmd.kind == "rollback":
            restored = self.restore_weights(int(p["to_step"]))
            return (f"weights and optimizer of step {restored} restored; counting goes on "
                    f"from step {self.step}")  # fmt: skip
        if cmd.kind == "set_max_length":
            self.set_max_length(int(p["tokens"]))
            return f"max length {self.max_new_tokens}"
        if cmd.kind == "stop":
            self.stop(str(p.get("reason", "command")))
            return "stopping"
        raise ValueError(f"unknown command kind {cmd.kind!r}")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"lr_scale": self.lr_scale},
            "algorithm": self.algorithm,
            "loss_overrides": dict(self.loss_overrides),
            "advantage_estimator": self.advantage_estimator,
            "max_new_tokens": self.max_new_tokens,
            "positive_emphasis": list(self.positive_emphasis),
            "config": self.config.to_dict(),
            "counters": dict(self.counters),
            "rng": ckpt.rng_state(self.prompt_rng, None),
            "generators": dist.gather_objects(self.generator.get_state()),
        }

    def save_checkpoint(self) -> Path | None:
        state = self.state_dict()  # collective (gathers generator states): every rank calls
        if not dist.is_main() or self.checkpoint_dir is None:
            return None
        path = ckpt.save_checkpoint(self.checkpoint_dir, self.step, state)
        ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scale = state["scheduler"]["lr_scale"]
        self.algorithm = state["algorithm"]
        self.loss_overrides = state["loss_overrides"]
        self.advantage_estimator = state["advantage_estimator"]
        self.max_new_tokens = state["max_new_tokens"]
        self.positive_emphasis = tuple(state["positive_emphasis"])
        self.counters = dict(state["counters"])
        saved_cfg = TrainConfig.from_dict(state["config"])
        # The step budget, output place and service link are this invocation's; the rest is
        # the run's.
        self.config = replace(saved_cfg, **{k: getattr(self.config, k) for k in INVOCATION_FIELDS})
        ckpt.restore_rng_state(state["rng"], self.prompt_rng, None)
        generators = state["generators"]
        self.generator.set_state(generators[self.rank % len(generators)].cpu())
        self.step = int(state["step"])
        self.history = self.history[: self.step] if len(self.history) > self.step else self.history
        self._set_lr()

    def resume_latest(self) -> bool:
        """Load the newest checkpoint in the output directory, if any."""
        found = None if self.checkpoint_dir is None else ckpt.list_checkpoints(self.checkpoint_dir)
        if not found:
            return False
        self.load_checkpoint(found[-1][1])
        return True
