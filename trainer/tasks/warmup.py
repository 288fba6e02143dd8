"""Supervised warm start: teach the policy the answer format so RL starts from a policy that
succeeds sometimes (RL from a random policy on a 0/1 reward sees no signal at all)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from rlkeel.trainer.models.device import autocast_for, default_device
from rlkeel.trainer.models.logprobs import token_log_probs
from rlkeel.trainer.models.registry import build_model
from rlkeel.trainer.models.tokenizer import CharTokenizer
from rlkeel.trainer.tasks.base import Prompt, Task, get_task

_CACHE_VERSION = 1


def answer_batch(tokenizer: CharTokenizer, prompts: list[Prompt],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``<bos> prompt answer <eos>`` right-padded: (input_ids, attention_mask, loss_mask), where
    loss_mask is 1 on the answer and ``<eos>`` tokens."""
    rows, answer_starts = [], []
    for p in prompts:
        prompt_ids = tokenizer.encode(p.text, add_bos=True)
        rows.append(prompt_ids + tokenizer.encode(p.answer, add_eos=True))
        answer_starts.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss_mask = torch.zeros(len(rows), width)
    for i, (row, start) in enumerate(zip(rows, answer_starts, strict=True)):
        ids[i, :len(row)] = torch.tensor(row)
        attn[i, :len(row)] = 1
        loss_mask[i, start:len(row)] = 1.0
    return ids.to(device), attn.to(device), loss_mask.to(device)


def supervised_warmup(model: nn.Module, tokenizer: CharTokenizer, task: Task, *, steps: int = 300,
                      batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                      device: torch.device | str | None = None,
                      cpu_threads: int | None = 1) -> dict[str, float]:  # fmt: skip
    """Cross-entropy on the answer tokens + ``<eos>`` of freshly sampled prompts, AdamW with a
    linear decay to 10% of ``lr``. Deterministic for a given model state and ``seed``.
    Returns ``{steps, loss_first, loss_last, seconds}``.

    On CPU torch runs with ``cpu_threads`` intra-op threads for the duration (restored after):
    the tiny model's matrices are too small for threads to pay, and on a busy machine they
    make it several times slower. ``None`` leaves torch's setting alone.
    """
    device = torch.device(device) if device is not None else default_device()
    previous_threads = torch.get_num_threads()
    if cpu_threads is not None and device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    try:
        return _train(model, tokenizer, task, steps, batch_size, lr, seed, device)
    finally:
        torch.set_num_threads(previous_threads)


def _train(model: nn.Module, tokenizer: CharTokenizer, task: Task, steps: int, batch_size: int,
           lr: float, seed: int, device: torch.device) -> dict[str, float]:  # fmt: skip
    model.to(device).train()
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 - 0.9 * s / max(1, steps))  # fmt: skip
    started = time.perf_counter()
    losses: list[float] = []
    for _ in range(steps):
        ids, attn, loss_mask = answer_batch(tokenizer, task.sample(batch_size, rng), device)
        with autocast_for(device):
            hidden = model(ids, attn)
            lp, _ = token_log_probs(model, hidden[:, :-1], ids[:, 1:], loss_mask[:, 1:])
        loss = -(lp * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {
        "steps": float(steps),
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan"),
        "seconds": time.perf_counter() - started,
    }


def evaluate_success(model: nn.Module, tokenizer: CharTokenizer, task: Task, *, n: int = 200,
                     seed: int = 12345, temperature: float = 0.0,
                     device: torch.device | str | None = None) -> float:  # fmt: skip
    """Share of ``n`` fresh prompts (seeded) whose response earns reward ≥ 1 (greedy default)."""
    from rlkeel.trainer.rollout import compute_rewards, generate

    prompts = task.sample(n, random.Random(seed))
    batch = generate(model, tokenizer, prompts, group_size=1,
                     max_new_tokens=task.max_answer_length + 1, temperature=temperature,
                     seed=seed, device=device)  # fmt: skip
    return float((compute_rewards(task, batch) >= 1.0).float().mean())


def default_cache_dir() -> Path:
    """``$RLKEEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlkeel``, else ``~/.cache/rlkeel``."""
    if env := os.environ.get("RLKEEL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlkeel"


class WarmStart(NamedTuple):
    model: nn.Module
    tokenizer: CharTokenizer
    task: Task
    info: dict[str, Any]


def warm_start_policy(task_name: str = "addition", seed: int = 0, *,
                      model_name: str = "builtin-tiny", model_cfg: dict[str, Any] | None = None,
                      task_kwargs: dict[str, Any] | None = None, steps: int = 400,
                      batch_size: int = 64, lr: float = 3e-3,
                      device: torch.device | str | None = None,
                      cache_dir: Path | str | None = None, use_cache: bool = True) -> WarmStart:  # fmt: skip
    """A built-in model warmed up on ``task_name``, cached on disk.

    The state dict is stored under ``cache_dir`` (default ``default_cache_dir()/warm_start``),
    keyed by a hash of (task config, model name and config, tokenizer, seed, steps, batch size,
    lr), so later calls load it instead of training. ``info`` has the warm-up figures and
    ``from_cache``. The model is returned in eval mode on ``device``.
    """
    device = torch.device(device) if device is not None else default_device()
    tokenizer = CharTokenizer()
    task = get_task(task_name, **(task_kwargs or {}))
    model_cfg = dict(model_cfg or {})
    key_src = json.dumps({
        "v": _CACHE_VERSION, "task": task.config(), "model": model_name, "cfg": model_cfg,
        "tokenizer": tokenizer.config(), "seed": seed, "steps": steps,
        "batch_size": batch_size, "lr": lr,
    }, sort_keys=True)  # fmt: skip
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "warm_start"
    file = path / f"{task.name}-{model_name.replace(':', '_').replace('/', '_')}-{key}.pt"
    torch.manual_seed(seed)
    model = build_model(model_name, tokenizer, **model_cfg)
    if use_cache and file.exists():
        saved = torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info = {**saved["info"], "from_cache": True, "path": str(file)}
        return WarmStart(model.to(device).eval(), tokenizer, task, info)
    info: dict[str, Any] = dict(supervised_warmup(model, tokenizer, task, steps=steps,
                                                  batch_size=batch_size, lr=lr, seed=seed,
                                                  device=device))  # fmt: skip
    if use_cache:
        path.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "info": info, "key": json.loads(key_src)}, tmp)
        os.replace(tmp, file)  # atomic: a concurrent reader never sees half a file
    info.update(from_cache=False, path=str(file))
    return WarmStart(model.eval(), tokenizer, task, info)
