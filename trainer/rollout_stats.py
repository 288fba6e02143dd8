"""Per-sample statistics (the wire ``SampleStats``) and rollout step metrics (DESIGN §3).

Step metrics aggregate the per-sample values with every sample weighing 1, so the server's
per-sample view and the step series agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rlkeel.trainer.rollout import RolloutBatch


def _k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Per-token k3 = exp(ref − lp) − (ref − lp) − 1 (Schulman's unbiased, non-negative
    estimator of KL(π‖π_ref)); the shared implementation when the algos package has it."""
    try:
        from rlkeel.trainer.algos import kl_estimate
    except ImportError:
        delta = (ref_log_probs - log_probs).clamp(-20.0, 20.0)
        return delta.exp() - delta - 1.0
    return kl_estimate(log_probs, ref_log_probs, "k3")


def repetition_share(tokens: Sequence[int] | str, n: int = 3) -> float:
    """Share of the response's n-grams that repeat an earlier one: 1 − unique/total (0..1).
    ``abcabc`` with n=3 → 1 − 3/4 = 0.25; fewer than n tokens → 0."""
    items = list(tokens)
    total = len(items) - n + 1
    if total <= 0:
        return 0.0
    unique = len({tuple(items[i:i + n]) for i in range(total)})
    return 1.0 - unique / total


def max_abs_log_ratio(log_probs: Tensor, old_log_probs: Tensor, response_mask: Tensor) -> Tensor:
    """[B] max over response tokens of |log π_θ − log π_old| (0 for an empty response)."""
    diff = (log_probs.detach().float() - old_log_probs.float()).abs() * response_mask
    return diff.amax(dim=1) if diff.shape[1] else diff.new_zeros(diff.shape[0])


def _per_sample_mean(values: Tensor, mask: Tensor) -> Tensor:
    count = mask.sum(1)
    return torch.where(count > 0, (values * mask).sum(1) / count.clamp(min=1),
                       torch.full_like(count, math.nan))  # fmt: skip


def _as_vector(values: Tensor | Sequence[float], batch: RolloutBatch, name: str) -> Tensor:
    """A [B] float tensor; a [B, T] per-token advantage becomes its mean over response tokens."""
    t = torch.as_tensor(values, dtype=torch.float32).to(batch.device)
    if t.dim() == 2:
        t = _per_sample_mean(t.float(), batch.response_mask)
    if t.shape != (len(batch),):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({len(batch)},)")
    return t


def _response_tokens(batch: RolloutBatch, row: int, eos_id: int | None) -> list[int]:
    mask = batch.response_mask[row].bool()
    tokens = batch.input_ids[row][mask].tolist()
    if eos_id is not None and tokens and tokens[-1] == eos_id:
        tokens = tokens[:-1]
    return tokens


def sample_stats(batch: RolloutBatch, rewards: Tensor | Sequence[float],
                 advantages: Tensor | Sequence[float], *,
                 log_ratio_max: Tensor | Sequence[float] | None = None,
                 repetition_n: int = 3, eos_id: int | None = 2) -> list[dict[str, Any]]:  # fmt: skip
    """One dict per sample with exactly the ``SampleStats`` fields.

    ``advantages`` may be per sample [B] or per token [B, T] (then averaged over the response).
    ``kl`` is the mean per-token k3 to the reference (None without one); ``log_ratio_max`` is
    passed through when known (see ``max_abs_log_ratio``). Repetition counts n-grams of the
    response tokens without the final ``<eos>`` (``eos_id``).
    """
    reward_v = _as_vector(rewards, batch, "rewards").tolist()
    adv_v = _as_vector(advantages, batch, "advantages").tolist()
    lr_v = None if log_ratio_max is None else _as_vector(log_ratio_max, batch, "log_ratio_max")
    mask = batch.response_mask
    entropy_v = _per_sample_mean(batch.entropy.float(), mask).tolist()
    logp_v = _per_sample_mean(batch.old_log_probs.float(), mask).tolist()
    kl_v: list[float] | None = None
    if batch.ref_log_probs is not None:
        kl_v = _per_sample_mean(_k3(batch.old_log_probs.float(), batch.ref_log_probs.float()),
                                mask).tolist()  # fmt: skip
    lengths = batch.lengths.tolist()
    truncated = batch.truncated.tolist()
    eos_seen = batch.eos_seen.tolist()
    out = []
    for i in range(len(batch)):
        out.append({
            "sample_id": batch.sample_ids[i],
            "group_id": batch.group_ids[i],
            "reward": float(reward_v[i]),
            "advantage": float(adv_v[i]),
            "length": int(lengths[i]),
            "truncated": bool(truncated[i]),
            "kl": None if kl_v is None else float(kl_v[i]),
            "log_ratio_max": None if lr_v is None else float(lr_v[i]),
            "entropy": float(entropy_v[i]),
            "repetition": repetition_share(_response_tokens(batch, i, eos_id), repetition_n),
            "extra": {"eos_seen": bool(eos_seen[i]), "mean_log_prob": float(logp_v[i])},
        })  # fmt: skip
    return out


def _group_zero_std(rewards: Tensor, group_index: Tensor) -> tuple[float, float, float]:
    """Shares of groups whose rewards are all equal: any, all correct (> 0), all wrong."""
    groups = group_index.unique()
    if groups.numel() == 0:
        return math.nan, math.nan, math.nan
    zero = correct = wrong = 0
    for g in groups.tolist():
        r = rewards[group_index == g]
        if float(r.max() - r.min()) <= 1e-8:
            zero += 1
            if float(r[0]) > 0:
                correct += 1
            else:
                wrong += 1
    n = groups.numel()
    return zero / n, correct / n, wrong / n


def _stats(values: Tensor) -> tuple[float, float, float, float]:
    finite = values[~values.isnan()]
    if finite.numel() == 0:
        return math.nan, math.nan, math.nan, math.nan
    std = float(finite.std()) if finite.numel() > 1 else 0.0
    return float(finite.mean()), std, float(finite.min()), float(finite.max())


def rollout_step_metrics(batch: RolloutBatch, rewards: Tensor | Sequence[float],
                         advantages: Tensor | Sequence[float], *,
                         repetition_n: int = 3, eos_id: int | None = 2) -> dict[str, float]:  # fmt: skip
    """Canonical rollout metrics (DESIGN §3) plus ``zero_std_all_correct_frac``,
    ``zero_std_all_wrong_frac``, ``eos_rate`` and ``log_prob_mean``.

    ``positive_frac`` is the share of samples with reward > 0 (the success rate on 0/1 tasks);
    ``kl_*`` appear only with a reference model; stds are unbiased (torch default).
    """
    reward_v = _as_vector(rewards, batch, "rewards")
    adv_v = _as_vector(advantages, batch, "advantages")
    mask = batch.response_mask
    r_mean, r_std, r_min, r_max = _stats(reward_v)
    a_mean, a_std, _, _ = _stats(adv_v)
    zero, correct, wrong = _group_zero_std(reward_v, batch.group_index)
    lengths = batch.lengths.float()
    repetition = [repetition_share(_response_tokens(batch, i, eos_id), repetition_n)
                  for i in range(len(batch))]  # fmt: skip
    metrics = {
        "reward_mean": r_mean, "reward_std": r_std, "reward_min": r_min, "reward_max": r_max,
        "advantage_mean": a_mean, "advantage_std": a_std,
        "advantage_abs_max": float(adv_v.abs().max()) if len(batch) else math.nan,
        "entropy_mean": _stats(_per_sample_mean(batch.entropy.float(), mask))[0],
        "length_mean": float(lengths.mean()) if len(batch) else math.nan,
        "length_max": float(lengths.max()) if len(batch) else math.nan,
        "truncation_rate": float(batch.truncated.float().mean()) if len(batch) else math.nan,
        "repetition_mean": sum(repetition) / len(repetition) if repetition else math.nan,
        "zero_std_group_frac": zero,
        "zero_std_all_correct_frac": correct,
        "zero_std_all_wrong_frac": wrong,
        "positive_frac": float((reward_v > 0).float().mean()) if len(batch) else math.nan,
        "eos_rate": float(batch.eos_seen.float().mean()) if len(batch) else math.nan,
        "log_prob_mean": _stats(_per_sample_mean(batch.old_log_probs.float(), mask))[0],
    }  # fmt: skip
    if batch.ref_log_probs is not None:
        kl = _per_sample_mean(_k3(batch.old_log_probs.float(), batch.ref_log_probs.float()), mask)
        kl_mean, _, _, kl_max = _stats(kl)
        metrics["kl_mean"], metrics["kl_max"] = kl_mean, kl_max
    return metrics
