"""PPO critic: the clipped value loss and explained variance (arXiv 1707.06347; verl's
``critic/vf_explained_var``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlkeel.trainer.algos.aggregation import aggregate, masked_mean


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    aggregation: str = "token_mean",
    global_token_count: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """½·max((V − R̂)², (clip(V, V_old − ε, V_old + ε) − R̂)²), aggregated (token_mean).

    Args:
        values: [B, T] V_θ (carries the gradient); old_values, returns, mask: [B, T].
    Returns:
        (loss 0-dim, metrics ``vf_loss vf_clip_frac vf_explained_var``, detached 0-dim).
    """
    valid = mask.bool()
    zero = values.new_zeros((), dtype=torch.float32)
    v = values.float().where(valid, zero)
    v_old = old_values.detach().float().where(valid, zero)
    target = returns.detach().float().where(valid, zero)
    v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
    unclipped = (v - target).square()
    clipped = (v_clipped - target).square()
    loss = aggregate(
        0.5 * torch.maximum(unclipped, clipped),
        mask,
        aggregation,
        global_token_count=global_token_count,
    )
    with torch.no_grad():
        metrics = {
            "vf_loss": loss.detach(),
            "vf_clip_frac": masked_mean((clipped > unclipped).float(), valid),
            "vf_explained_var": explained_variance(v, target, valid),
        }
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """0-dim 1 − Var(R̂ − V)/Var(R̂) over the valid tokens (1 is perfect, ≤ 0 is no better
    than a constant); NaN when Var(R̂) = 0 because it is undefined, not good or bad."""
    valid = mask.bool()
    v = values.detach().float()
    r = returns.detach().float()
    var_returns = _masked_var(r, valid)
    var_residual = _masked_var(r - v, valid)
    ratio = var_residual / var_returns.where(var_returns > 0, torch.ones_like(var_returns))
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, math.nan))


def _masked_var(x: Tensor, valid: Tensor) -> Tensor:
    mean = masked_mean(x, valid)
    var: Tensor = masked_mean((x - mean).square(), valid)
    return var
