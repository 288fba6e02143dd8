"""Advantage estimators.

Group-relative estimators (one scalar per response, broadcast to its tokens):
- ``grpo``: Â_i = (r_i − mean_g r) / (std_g r + ε), unbiased std — GRPO, arXiv 2402.03300.
- ``dr_grpo``: Â_i = r_i − mean_g r (no std: removes the difficulty bias) — arXiv 2503.20783.
- ``rloo``: Â_i = r_i − mean of the other G−1 rewards (leave-one-out baseline).
A singleton group has no baseline and gets 0 under every estimator.

Token-level GAE for PPO with a critic (Schulman et al., arXiv 1506.02438): ``gae``,
``token_rewards_for_gae`` and ``whiten``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Final

import torch
from torch import Tensor

GROUP_ADVANTAGES: Final[tuple[str, ...]] = ("grpo", "dr_grpo", "rloo")
ADVANTAGE_ESTIMATORS: Final[tuple[str, ...]] = ("gae", *GROUP_ADVANTAGES)


def group_index(
    group_ids: Tensor | Sequence[Hashable], device: torch.device | None = None
) -> Tensor:
    """Dense group index [B] (0..G−1, long) from ids given as a tensor or any hashable list."""
    if isinstance(group_ids, Tensor):
        ids = group_ids.to(device) if device is not None else group_ids
        inverse: Tensor = torch.unique(ids, return_inverse=True)[1]
        return inverse.reshape(-1)
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(g, len(dense)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device)


def _group_sums(values: Tensor, index: Tensor) -> Tensor:
    """Σ of ``values`` [B] per group, in a [B] buffer (G ≤ B, so no host read of G)."""
    return values.new_zeros(values.shape[0]).index_add_(0, index, values)


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor | Sequence[Hashable],
    *,
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages [B] from sequence rewards [B] and their prompt group ids [B].

    Vectorised with ``index_add_``/gather; no Python loop over groups. Float rewards keep
    their dtype, others become float32. ``gae`` is token-level: call :func:`gae` instead.
    """
    if name not in GROUP_ADVANTAGES:
        hint = " (gae is token-level: call gae())" if name == "gae" else ""
        raise ValueError(
            f"unknown advantage estimator {name!r}{hint}; valid: {', '.join(GROUP_ADVANTAGES)}"
        )
    r = rewards if rewards.is_floating_point() else rewards.float()
    r = r.reshape(-1)
    index = group_index(group_ids, device=r.device)
    if index.shape != r.shape:
        raise ValueError(f"group_ids has {index.numel()} entries; rewards has {r.numel()}")
    if r.numel() == 0:
        return r.clone()
    counts = _group_sums(torch.ones_like(r), index)
    sums = _group_sums(r, index)
    n = counts[index]
    has_peers = n > 1
    if name == "rloo":
        baseline = (sums[index] - r) / (n - 1).clamp(min=1.0)
        return torch.where(has_peers, r - baseline, torch.zeros_like(r))
    centred = r - (sums / counts)[index]
    if name == "dr_grpo":
        return torch.where(has_peers, centred, torch.zeros_like(r))
    var = _group_sums(centred.square(), index)[index] / (n - 1).clamp(min=1.0)
    return torch.where(has_peers, centred / (var.sqrt() + eps), torch.zeros_like(r))


def token_rewards_for_gae(
    seq_rewards: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Per-token rewards [B, T] for GAE: −β·KL_t on every valid token, plus the sequence reward
    [B] on the last valid token of each row (an all-zero row gets nothing)."""
    valid = mask.bool()
    dtype = seq_rewards.dtype if seq_rewards.is_floating_point() else torch.float32
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * kl.to(dtype).where(valid, rewards.new_zeros(()))
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=1)
    has_tokens = last >= 0
    bonus = seq_rewards.to(dtype).where(has_tokens, rewards.new_zeros(()))
    return rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), bonus.unsqueeze(1))


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the valid tokens of each row.

    δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last valid token; Â_t = Σ_l (γλ)^l δ_{t+l};
    R̂_t = Â_t + V_t. Masked positions inside a row are skipped (the recursion carries over
    them) and get 0. Not whitened: see :func:`whiten`. No gradient flows (inputs are detached).

    Args:
        rewards, values, mask: [B, T].
    Returns:
        (advantages [B, T], returns [B, T]).
    """
    valid = mask.bool()
    r = rewards.detach()
    v = values.detach().to(r.dtype)
    next_value = r.new_zeros(r.shape[0])
    next_adv = r.new_zeros(r.shape[0])
    advantages = torch.zeros_like(r)
    # A loop over time (not over samples) is inherent to the backward recursion.
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = delta + gamma * lam * next_adv
        here = valid[:, t]
        next_adv = torch.where(here, adv_t, next_adv)
        next_value = torch.where(here, v[:, t], next_value)
        advantages[:, t] = torch.where(here, adv_t, torch.zeros_like(adv_t))
    returns = torch.where(valid, advantages + v, torch.zeros_like(advantages))
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + ε) over the valid tokens of the whole batch (unbiased var);
    masked positions become 0. ``shift_mean=False`` keeps the mean (scale only)."""
    valid = mask.bool()
    m = valid.to(x.dtype)
    count = m.sum()
    mean = (x * m).sum() / count.clamp(min=1.0)
    var = ((x - mean).square() * m).sum() / (count - 1.0).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros_like(out))
