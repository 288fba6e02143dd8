"""The RL training loop. One step reads top to bottom in ``Trainer.train_step``:

    sample prompts → generate G responses each → rewards (+ DAPO soft overlong punishment)
    → advantages (group estimators, or PPO's value head + GAE + whitening)
    → rollout report → ``on_rollout`` verdict (drop samples / skip step / weights)
    → PPO epochs over minibatches (grad clipping; non-finite loss or grad norm skips the update)
    → lr schedule → update report → ``on_update`` → due commands → checkpoint.

The closed loop (the service) plugs in through the two hooks and the public methods
``switch_algorithm``, ``drop_samples``, ``scale_lr``, ``set_max_length``,
``set_positive_emphasis``, ``rollback`` and ``stop``. Nothing here talks HTTP.
"""


from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlkeel.trainer import algos
from rlkeel.trainer import distributed as dist
from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.inject import Injector
from rlkeel.trainer.loop.controls import TrainerControls
from rlkeel.trainer.loop.records import (
    CommandHook,
    LoopReport,
    PendingCommand,
    RolloutHook,
    RolloutVerdict,
    UpdateBatch,
    UpdateHook,
    lr_multiplier,
)
from rlkeel.trainer.models import CharTokenizer, ValueHead, autocast_for, build_model
from rlkeel.trainer.progress import MetricsWriter
from rlkeel.trainer.rollout import RolloutBatch, compute_rewards, generate
from rlkeel.trainer.rollout_stats import rollout_step_metrics, sample_stats
from rlkeel.trainer.tasks import Task, get_task, warm_start_policy


class Trainer(TrainerControls):
    """Owns the policy, value head, optimizer, RNG streams and step counter of one run (one
    rank under torchrun). ``run()`` trains to ``config.steps``; ``train_step()`` does one."""

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None,
                 tokenizer: CharTokenizer | None = None, task: Task | None = None,
                 on_rollout: RolloutHook | None = None, on_update: UpdateHook | None = None,
                 on_command: CommandHook | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        algos.algorithm_spec(config.algorithm)  # unknown names fail here, listing valid ones
        self.config = config
        self.device = torch.device(device) if device is not None else dist.local_device(config.device)
        dist.init_distributed(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.task = task or get_task(config.task, **config.task_options)
        self.tokenizer = tokenizer or CharTokenizer()
        torch.manual_seed(config.seed)
        if model is None:
            model = self._initial_policy()
        self.model = model.to(self.device)
        self.model.train()
        # The reference policy is the starting policy, frozen (KL anchor, GRPO β·k3).
        self.ref_model: nn.Module | None = None
        if config.reference_on:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        # The value head always exists (it is tiny), so switching to PPO mid-run needs no
        # optimizer surgery; it only gets gradients while the algorithm uses GAE.
        self.value_head = ValueHead(self.model.hidden_size).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.model.parameters() if p.requires_grad]},
             {"params": list(self.value_head.parameters())}],
            lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))  # fmt: skip
        # Data stream: every rank draws the same global prompts and keeps its share, so the
        # stream is one python RNG whose state a checkpoint restores.
        self.prompt_rng = random.Random(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(
            config.seed * 1_000_003 + 7919 * self.rank)  # fmt: skip
        self.step = 0
        self.algorithm = config.algorithm
        self.loss_overrides: dict[str, Any] = {
            k: v for k in ("clip_eps_low", "clip_eps_high")
            if (v := getattr(config, k)) is not None}  # fmt: skip
        self.advantage_estimator = config.advantage_estimator
        self.max_new_tokens = config.max_new_tokens
        self.positive_emphasis = (config.positive_emphasis, config.positive_factor)
        self.lr_scale = 1.0
        self.on_rollout, self.on_update, self.on_command = on_rollout, on_update, on_command
        self.pending_commands: list[PendingCommand] = []
        self.stop_reason: str | None = None
        self.show_progress = False  # a tqdm bar in run() (the CLI turns it on)
        self.skip_next_step = False
        self.counters = {"nonfinite_skips": 0, "skipped_steps": 0}
        self.history: list[dict[str, float]] = []
        self.injector: Injector | None = None  # fault injection, a testing tool
        if config.inject:
            self.injector = Injector.from_specs(config.inject, config.seed)
            self.injector.install(self)
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.metrics_writer = (MetricsWriter(self.out_dir / "metrics.jsonl")
                               if self.out_dir is not None and dist.is_main() else None)  # fmt: skip
        self._set_lr()

    # ------------------------------------------------------------------ setup helpers
    def _initial_policy(self) -> nn.Module:
        cfg = self.config
        if cfg.warm_start and cfg.model.startswith("builtin"):
            ws = warm_start_policy(cfg.task, cfg.seed, model_name=cfg.model,
                                   model_cfg=cfg.model_options, task_kwargs=cfg.task_options,
                                   steps=cfg.warm_start_steps, device=self.device)  # fmt: skip
            return ws.model
        return build_model(cfg.model, self.tokenizer, **cfg.model_options)

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints"

    @property
    def spec(self) -> Any:
        return algos.algorithm_spec(self.algorithm)

    @property
    def estimator(self) -> str:
        return self.advantage_estimator or self.spec.advantage_estimator

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"

    def _set_lr(self) -> float:
        lr = self.config.lr * self.lr_scale * lr_multiplier(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[dict[str, float]]:
        """Train until ``config.steps`` or ``stop()``; writes a final checkpoint when there is
        an output directory. Returns the per-step metrics."""
        from rlkeel.trainer.progress import ProgressBar

        bar = ProgressBar(self.config.steps, self.step, enabled=dist.is_main() and self.show_progress)
        try:
            while self.step < self.config.steps and self.stop_reason is None:
                metrics = self.train_step()
                bar.update(metrics, self.step)
            if self.checkpoint_dir is not None:
                self.save_checkpoint()
        finally:
            bar.close()
            if self.metrics_writer is not None:
                self.metrics_writer.close()
                self.metrics_writer = None
        return self.history

    def train_step(self) -> dict[str, float]:
        started = time.perf_counter()
        step = self.step

        # 1. Prompts and G responses each (this rank's share of the global prompts). Injected
        # faults (a testing tool) may change the lr, the rewards or the model that samples.
        sampler = self.model if self.injector is None else self.injector.before_step(self)
        prompts = self.task.sample(self.config.prompts_per_step, self.prompt_rng)
        mine = list(range(self.rank, len(prompts), self.world))
        batch = generate(sampler, self.tokenizer, [prompts[i] for i in mine],
                         group_size=self.config.group_size, max_new_tokens=self.max_new_tokens,
                         temperature=self.config.temperature, generator=self.generator,
                         device=self.device, ref_model=self.ref_model, step=step)  # fmt: skip
        batch = self._global_ids(batch, mine)

        # 2. Rewards; DAPO's soft overlong punishment shapes them by length.
        rewards = compute_rewards(self.task, batch)
        if self.config.overlong_buffer > 0:
            rewards = rewards + algos.soft_overlong_penalty(
                batch.lengths.float(), self.max_new_tokens, self.config.overlong_buffer)  # fmt: skip

        # 3. Advantages per token.
        ub = self._advantages(batch, rewards)

        # 4. Report the rollout and take the verdict (rank 0 decides, every rank applies).
        samples = sample_stats(batch, rewards, ub.advantages)
        rollout_metrics = rollout_step_metrics(batch, rewards, ub.advantages)
        if self.world > 1:
            rollout_metrics = self._global_rollout_metrics(batch, rewards, ub.advantages, samples)
            samples = [s for part in dist.gather_objects(samples) for s in part]
        report = LoopReport(step, "rollout", self.algorithm, rollout_metrics,
                            samples if dist.is_main() else [])  # fmt: skip
        verdict = RolloutVerdict()
        if dist.is_main() and self.on_rollout is not None:
            verdict = RolloutVerdict.from_any(self.on_rollout(report))
        verdict = dist.broadcast_object(verdict)
        self.queue_commands(verdict.commands)

        # 5. Apply drops: dropped samples leave every normaliser — the group mean and std of
        # the advantages (or PPO's whitening) included — so the advantages of the kept samples
        # are computed again without them, and the update takes the sub-batch.
        total = self._global_count(len(ub))
        if dist.any_rank(bool(set(verdict.drop) & set(batch.sample_ids)), self.device):
            drop = set(verdict.drop)
            keep = torch.tensor([sid not in drop for sid in batch.sample_ids], dtype=torch.bool)
            ub = self._advantages(batch.select(keep), rewards[keep.to(rewards.device)])
        if verdict.weights:
            w = [verdict.weights.get(sid, 1.0) for sid in ub.sample_ids]
            ub.weights = ub.weights * torch.tensor(w, dtype=torch.float32, device=self.device)
        removed = {"verdict_dropped_frac": 1 - self._global_count(len(ub)) / max(1, total)}
        if self.config.dynamic_sampling_on:  # DAPO: groups with equal rewards carry no signal
            before = self._global_count(len(ub))
            keep = algos.dynamic_sampling_keep(ub.rewards, ub.rollout.group_index)
            ub = ub.select(keep)
            removed["dynamic_sampling_dropped_frac"] = (before - self._global_count(len(ub))) / max(1, total)
        if self.config.overlong_filter_on:  # DAPO: truncated samples are masked out
            before = self._global_count(len(ub))
            ub = ub.select(~ub.rollout.truncated)
            removed["overlong_filtered_frac"] = (before - self._global_count(len(ub))) / max(1, total)
        kept = self._global_count(len(ub))
        skip = verdict.skip_step or self.skip_next_step or kept == 0
        self.skip_next_step = False

        # 6. PPO epochs over minibatches.
        update_metrics = {"optimizer_steps": 0.0} if skip else self.update(ub)
        if skip:
            self.counters["skipped_steps"] += 1

        # 7. Step boundary: lr schedule, metrics, update report, commands, checkpoint.
        self.step += 1
        lr_used = self.optimizer.param_groups[0]["lr"]
        self._set_lr()
        elapsed = time.perf_counter() - started
        tokens = float(dist.all_reduce_sum(batch.lengths.sum().float()).item())
        metrics = {
            **rollout_metrics, **update_metrics, **removed,
            "lr": lr_used, "step_time_s": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
            "dropped_frac": 1 - kept / max(1, total), "step_skipped": float(skip),
            "nonfinite_skips": float(self.counters["nonfinite_skips"]),
            "max_new_tokens": float(self.max_new_tokens), "lr_scale": self.lr_scale,
        }  # fmt: skip
        self.history.append(metrics)
        if self.metrics_writer is not None:
            self.metrics_writer.write({"step": step, "algorithm": self.algorithm, **metrics})
        commands: list[Any] = []
        if dist.is_main() and self.on_update is not None:
            answer = self.on_update(LoopReport(step, "update", self.algorithm, metrics))
            if answer is not None:
                commands = list(getattr(answer, "commands", answer))
        # Rank 0 hears the service; every rank must apply the same commands at this boundary.
        self.queue_commands(dist.broadcast_object(commands))
        self.apply_due_commands()
        every = self.config.checkpoint_every
        if every > 0 and self.step % every == 0 and self.checkpoint_dir is not None:
            self.save_checkpoint()
        return metrics

    # ------------------------------------------------------------------ step parts
    def _global_ids(self, batch: RolloutBatch, prompt_indices: list[int]) -> RolloutBatch:
        """Sample and group ids unique over ranks: group = global prompt index."""
        g = self.config.group_size
        gids = [prompt_indices[i // g] for i in range(len(batch))]
        return replace(batch,
                       group_ids=[f"s{batch.step}-g{p}" for p in gids],
                       sample_ids=[f"s{batch.step}-{p * g + i % g}" for i, p in enumerate(gids)])  # fmt: skip

    def _global_count(self, n: int) -> int:
        if self.world == 1:
            return n
        return int(dist.all_reduce_sum(torch.tensor(float(n), device=self.device)).item())

    def _global_rollout_metrics(self, batch: RolloutBatch, rewards: Tensor, adv: Tensor,
                                samples: list[dict[str, Any]]) -> dict[str, float]:  # fmt: skip
        """Rollout metrics over the global batch: gather the per-sample vectors to every rank
        and compute the same function the single-process run computes."""
        parts = dist.gather_objects((batch.to("cpu"), rewards.cpu(), adv.cpu()))
        offset, batches = 0, []
        for b, _, _ in parts:
            batches.append(replace(b, group_index=b.group_index + offset))
            offset += int(b.group_index.max().item()) + 1 if len(b) else 0
        width = max(b.input_ids.shape[1] for b in batches)

        def pad(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        merged = replace(batches[0], **{
            name: torch.cat([pad(getattr(b, name)) if getattr(b, name).dim() == 2
                             else getattr(b, name) for b in batches])
            for name in ("input_ids", "attention_mask", "response_mask", "old_log_probs",
                         "entropy", "truncated", "eos_seen", "lengths", "group_index")
        }, ref_log_probs=(None if batches[0].ref_log_probs is None
                          else torch.cat([pad(b.ref_log_probs) for b in batches])))  # fmt: skip
        all_rewards = torch.cat([r for _, r, _ in parts])
        all_adv = torch.cat([pad(a) for _, _, a in parts])
        return rollout_step_metrics(merged, all_rewards, all_adv)

    def _advantages(self, batch: RolloutBatch, rewards: Tensor) -> UpdateBatch:
        mask = batch.response_mask
        weights = torch.ones(len(batch), device=self.device)
        if not self.uses_critic:
            adv_seq = algos.compute_advantages(self.estimator, rewards, batch.group_index)
            advantages = adv_seq[:, None] * mask
            returns = old_values = None
        else:
            # PPO: V(s_t) is read from the hidden state *before* token t (same alignment as
            # the log-probs), then GAE over the token rewards and whitening over the batch.
            with torch.no_grad(), autocast_for(self.device):
                old_values = self._values(batch)
            kl = None
            if batch.ref_log_probs is not None and self.config.kl_coef > 0:
                kl = algos.kl_estimate(batch.old_log_probs, batch.ref_log_probs,
                                       self.config.kl_estimator)  # fmt: skip
            token_rewards = algos.token_rewards_for_gae(rewards, mask, kl, self.config.kl_coef)
            advantages, returns = algos.gae(token_rewards, old_values, mask,
                                            gamma=self.config.gamma, lam=self.config.lam)  # fmt: skip
            if self.config.whiten_advantages:
                advantages = self._whiten(advantages, mask)
        token_weights = None
        mode, factor = self.positive_emphasis
        if mode != "none":
            emphasis = algos.apply_positive_emphasis(mode, advantages, factor, mask=mask)
            advantages, token_weights = emphasis.advantages, emphasis.token_weights
            if emphasis.sample_weights is not None:
                weights = weights * emphasis.sample_weights
        return UpdateBatch(batch, rewards, advantages * mask, weights, returns, old_values,
                           token_weights)  # fmt: skip

    def _whiten(self, values: Tensor, mask: Tensor) -> Tensor:
        """Whiten over the valid tokens of the *global* batch (sums all-reduced)."""
        stats = dist.all_reduce_sum(torch.stack(
            ((values * mask).sum(), (values.square() * mask).sum(), mask.sum())).double())  # fmt: skip
        mean = stats[0] / stats[2].clamp(min=1)
        count = stats[2].clamp(min=1)
        var = ((stats[1] - count * mean.square()) / (count - 1).clamp(min=1)).clamp(min=0)
        return ((values - mean.float()) * torch.rsqrt(var.float() + 1e-8)) * mask

    def _values(self, batch: RolloutBatch | UpdateBatch, hidden: Tensor | None = None) -> Tensor:
        rollout = batch.rollout if isinstance(batch, UpdateBatch) else batch
        if hidden is None:
            hidden = self.model(rollout.input_ids, rollout.attention_mask)
        v = self.value_head(hidden)
        return torch.cat((v.new_zeros(v.shape[0], 1), v[:, :-1]), dim=1) * rollout.response_mask

    def _minibatch_indices(self, n: int, epoch: int) -> list[Tensor]:
        # Seeded by (seed, step, epoch): reproducible without another RNG in the checkpoint.
        g = torch.Generator().manual_seed(self.config.seed * 7_368_787 + self.step * 1009 + epoch)
        order = torch.randperm(n, generator=g) if self.config.minibatches > 1 else torch.arange(n)
        return [c for c in torch.tensor_split(order, min(self.config.minibatches, max(n, 1)))]

    def update(self, ub: UpdateBatch) -> dict[str, float]:
        """PPO epochs over minibatches; one optimizer step per minibatch. Returns the update
        metrics (averaged over the optimizer steps; ``log_ratio_abs_max`` is the max)."""
        sums: dict[str, float] = {}
        counted = 0
        grad_norms: list[float] = []
        log_ratio_max = 0.0
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for epoch in range(self.config.ppo_epochs):
            for index in self._minibatch_indices(len(ub), epoch):
                mb = ub.select(index)
                loss, parts = self._minibatch_loss(mb)
                log_ratio_max = max(log_ratio_max, parts.pop("_log_ratio_abs_max"))
                if dist.any_rank(not bool(torch.isfinite(loss)), self.device):
                    # A non-finite loss would poison Adam's moments: skip this update.
                    self.optimizer.zero_grad(set_to_none=True)
                    self.counters["nonfinite_skips"] += 1
                    continue
                loss.backward()
                dist.all_reduce_gradients(params)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
                if not math.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.counters["nonfinite_skips"] += 1
                    grad_norms.append(grad_norm)
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                grad_norms.append(grad_norm)
                counted += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(counted, 1) for k, v in sums.items()}
        finite_norms = [g for g in grad_norms if math.isfinite(g)]
        out["grad_norm"] = (sum(finite_norms) / len(finite_norms) if finite_norms
                            else (grad_norms[-1] if grad_norms else math.nan))  # fmt: skip
        if not counted and "loss" not in out:
            out["loss"] = math.nan
        out["log_ratio_abs_max"] = log_ratio_max
        out["optimizer_steps"] = float(counted)
        return out

    def _minibatch_loss(self, mb: UpdateBatch) -> tuple[Tensor, dict[str, float]]:
        r = mb.rollout
        mask = r.response_mask
        token_count, seq_count = dist.global_counts(mask)
        with autocast_for(self.device):
            hidden = self.model(r.input_ids, r.attention_mask)
            log_probs, entropy = _log_probs_from_hidden(self.model, hidden, r)
            out = algos.policy_loss(
                self.algorithm, log_probs, r.old_log_probs, mb.advantages, mask,
                ref_log_probs=r.ref_log_probs if self.config.kl_coef > 0 else None,
                kl_coef=self.config.kl_coef, kl_estimator=self.config.kl_estimator,
                sample_weights=mb.weights, token_weights=mb.token_weights,
                norm_constant=float(self.max_new_tokens), global_token_count=token_count,
                global_seq_count=seq_count, **self.loss_overrides)  # fmt: skip
            loss = out.loss
            parts = {k: float(v.detach()) for k, v in out.metrics.items()}
            parts["_log_ratio_abs_max"] = parts.pop("log_ratio_abs_max")
            parts["policy_loss"] = float(out.metrics["pg_loss"])
            if "kl" in parts:
                parts["kl_loss"] = parts.pop("kl")
            if self.uses_critic and mb.returns is not None and mb.old_values is not None:
                values = self._values(mb, hidden)
                v_loss, v_metrics = algos.value_loss(values, mb.old_values, mb.returns, mask,
                                                     clip_eps=self.config.vf_clip,
                                                     global_token_count=token_count)  # fmt: skip
                loss = loss + self.config.vf_coef * v_loss
                parts["value_loss"] = float(v_loss.detach())
                parts["vf_clip_frac"] = float(v_metrics["vf_clip_frac"])
                parts["explained_variance"] = float(v_metrics["vf_explained_var"])
        parts["loss"] = float(loss.detach())
        parts["entropy_loss"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        if self.world > 1:  # losses are shares of the global loss; other metrics are averaged
            keys = sorted(k for k in parts if k != "_log_ratio_abs_max")
            summed = dist.all_reduce_sum(torch.tensor([parts[k] for k in keys], device=self.device))
            for k, v in zip(keys, summed.tolist(), strict=True):
                share = k in ("loss", "policy_loss", "value_loss")
                parts[k] = v if share else v / self.world
        return loss, parts


def _log_probs_from_hidden(model: nn.Module, hidden: Tensor,
                           r: RolloutBatch) -> tuple[Tensor, Tensor]:  # fmt: skip
    """log π_θ and entropy aligned with ``input_ids`` (column 0 reads 0), reusing ``hidden``
    so the value head and the policy share one forward pass."""
    from rlkeel.trainer.models import token_log_probs

    lp, ent = token_log_probs(model, hidden[:, :-1], r.input_ids[:, 1:], r.response_mask[:, 1:],
                              temperature=r.temperature)  # fmt: skip
    pad = lp.new_zeros(lp.shape[0], 1)
    return torch.cat((pad, lp), dim=1), torch.cat((pad, ent), dim=1)
