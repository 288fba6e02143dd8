"""Policy losses (minimised: the negatives of the papers' objectives), one entry point by name.

- ``ppo``: clipped surrogate, optional dual clip (arXiv 1707.06347, dual clip 1912.09729).
- ``grpo``: PPO token term + β·k3 to the reference (arXiv 2402.03300).
- ``dapo``: decoupled clip 0.2/0.28, token_mean (arXiv 2503.14476).
- ``gspo``: clipped surrogate on the length-normalised sequence ratio (arXiv 2507.18071).
- ``gspo_token``: GSPO-token, s_{i,t} = sg[s_i]·π_θ/sg[π_θ] with per-token advantages.
- ``dr_grpo``: PPO token term, seq_mean_token_sum_norm (arXiv 2503.20783).
- ``cispo``: −sg(clip(ρ))·Â·log π_θ (MiniMax-M1, arXiv 2506.13585).

All tensors are [B, T] (a [B] advantage is broadcast over tokens); ``mask`` is 1 on response
tokens. Everything stays on the device: no ``.item()``; metrics are detached 0-dim tensors
computed over this rank's valid tokens (GSPO's clip fractions: over valid sequences).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from rlkeel.trainer.algos.aggregation import aggregate, check_aggregation, masked_mean
from rlkeel.trainer.algos.kl import kl_estimate
from rlkeel.trainer.algos.registry import algorithm_spec

LOG_RATIO_CLAMP: Final[float] = 20.0
_CLIPPED_SURROGATE: Final[frozenset[str]] = frozenset({"ppo", "grpo", "dapo", "dr_grpo"})


@dataclass(frozen=True)
class LossOutput:
    """``loss``: 0-dim tensor to minimise. ``metrics``: detached 0-dim tensors — always
    ``pg_loss clip_frac clip_frac_low clip_frac_high clip_frac_dual ppo_kl log_ratio_abs_max
    ratio_mean``, plus ``kl`` (token mean of the estimator) when ``ref_log_probs`` is given.
    A clip flag marks a unit whose clipped branch is active (zero gradient): ``low`` where
    Â < 0 and ρ < 1 − ε_low, ``high`` where Â > 0 and ρ > 1 + ε_high. GSPO counts sequences;
    CISPO counts tokens whose IS weight was truncated, whatever the sign of Â."""

    loss: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class _Surrogate:
    loss: Tensor
    clipped_low: Tensor
    clipped_high: Tensor
    dual_clipped: Tensor


def _clipped_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, dual_clip_c: float | None
) -> _Surrogate:
    """ℓ = −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â); with dual clip, ℓ ≤ −c·Â where Â < 0.

    A flag is set where the clipped branch is the active one (its gradient is zero)."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    low = (adv < 0) & (ratio < 1.0 - eps_low)
    high = (adv > 0) & (ratio > 1.0 + eps_high)
    dual = torch.zeros_like(low)
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
    return _Surrogate(loss, low, high, dual)


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B, T] detached float advantages from a [B] or [B, T] tensor."""
    adv = advantages.detach().float()
    if adv.dim() == 1 and adv.shape[0] == mask.shape[0]:
        return adv.unsqueeze(1).expand(mask.shape)
    if adv.shape == mask.shape:
        return adv
    raise ValueError(
        f"advantages have shape {tuple(adv.shape)}; expected ({mask.shape[0]},) or {tuple(mask.shape)}"
    )


def _sequence_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] per-sequence advantage: as given, or the mean over the row's valid tokens."""
    adv = advantages.detach().float()
    if adv.dim() == 1:
        return _token_advantages(adv, mask)[:, 0]
    adv = _token_advantages(adv, mask)
    valid = mask.bool()
    count = valid.sum(dim=1).clamp(min=1).to(adv.dtype)
    return adv.where(valid, adv.new_zeros(())).sum(dim=1) / count


def _check_shapes(log_probs: Tensor, old_log_probs: Tensor, mask: Tensor) -> None:
    if (
        log_probs.dim() != 2
        or log_probs.shape != old_log_probs.shape
        or log_probs.shape != mask.shape
    ):
        raise ValueError(
            "log_probs, old_log_probs and mask must share one [B, T] shape; got "
            f"{tuple(log_probs.shape)}, {tuple(old_log_probs.shape)}, {tuple(mask.shape)}"
        )


def policy_loss(
    name: str,
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    sample_weights: Tensor | None = None,
    token_weights: Tensor | None = None,
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = None,
    dual_clip_c: float | None = None,
    aggregation: str | None = None,
    norm_constant: float | None = None,
    global_token_count: Tensor | float | None = None,
    global_seq_count: Tensor | float | None = None,
) -> LossOutput:
    """The policy loss ``name`` with its defaults from :func:`algorithm_spec`, overridable.

    Args:
        log_probs: [B, T] log π_θ of the sampled tokens (carries the gradient).
        old_log_probs: [B, T] log π_old (behaviour policy); detached.
        advantages: [B] per sequence or [B, T] per token; detached. GSPO needs one value per
            sequence: a [B, T] input is reduced to its mean over the row's valid tokens.
        mask: [B, T], 1 on response tokens. All-zero rows (dropped samples) leave every
            normaliser; masked tokens get exactly zero gradient.
        ref_log_probs: [B, T] log π_ref; needed when ``kl_coef > 0``.
        kl_coef: β. When > 0, β·KL (``kl_estimator``) is added per token before aggregation,
            for any loss (the default specs put it only in GRPO).
        sample_weights: [B] multiplier on each sample's per-token loss (PG and KL terms), for
            positive emphasis and verdict weights; unlike the mask it keeps the normalisers.
        token_weights: [B, T] multiplier on the policy-gradient term only (positive_tokens
            emphasis); it keeps the normalisers.
        clip_eps_low, clip_eps_high, dual_clip_c, aggregation: override the spec's defaults.
        norm_constant: C of ``seq_mean_token_sum_norm`` (default T = ``mask.shape[1]``).
        global_token_count, global_seq_count: the global normalisers under DDP
            (see :func:`aggregate`).
    """
    spec = algorithm_spec(name)
    _check_shapes(log_probs, old_log_probs, mask)
    eps_low = spec.clip_eps_low if clip_eps_low is None else clip_eps_low
    eps_high = spec.clip_eps_high if clip_eps_high is None else clip_eps_high
    dual_c = spec.dual_clip_c if dual_clip_c is None else dual_clip_c
    mode = spec.aggregation if aggregation is None else aggregation
    check_aggregation(mode)
    if dual_c is not None and (name == "cispo" or dual_c <= 1.0):
        raise ValueError(f"dual_clip_c must be > 1 and is not defined for cispo; got {dual_c}")
    if kl_coef > 0 and ref_log_probs is None:
        raise ValueError("kl_coef > 0 needs ref_log_probs")

    valid = mask.bool()
    zero = log_probs.new_zeros((), dtype=torch.float32)
    lp = log_probs.float().where(valid, zero)  # where, not *: a -inf pad cannot become NaN
    old = old_log_probs.detach().float().where(valid, zero)
    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    metric_mask = valid  # the units the clip fractions count: tokens, or sequences for GSPO

    if name in _CLIPPED_SURROGATE:
        surrogate = _clipped_surrogate(
            ratio, _token_advantages(advantages, mask), eps_low, eps_high, dual_c
        )
        pg_mat = surrogate.loss
    elif name == "gspo":
        # s_i = exp(mean_t log ρ_{i,t}): the length-normalised sequence ratio.
        seq_ratio = _sequence_log_ratio(log_ratio, valid).exp()
        surrogate = _clipped_surrogate(
            seq_ratio, _sequence_advantages(advantages, mask), eps_low, eps_high, dual_c
        )
        pg_mat = surrogate.loss.unsqueeze(1).expand(mask.shape)
        metric_mask = valid.any(dim=1)
    elif name == "gspo_token":
        # s_{i,t} = sg[s_i]·π_θ/sg[π_θ]: the value of s_i, the gradient of a token ratio.
        seq_log_ratio = _sequence_log_ratio(log_ratio, valid).detach()
        token_ratio = (seq_log_ratio.unsqueeze(1) + lp - lp.detach()).exp()
        surrogate = _clipped_surrogate(
            token_ratio, _token_advantages(advantages, mask), eps_low, eps_high, dual_c
        )
        pg_mat = surrogate.loss
    else:  # cispo: the IS weight is clipped and detached; every token keeps its gradient.
        adv = _token_advantages(advantages, mask)
        weight = ratio.detach().clamp(1.0 - eps_low, 1.0 + eps_high)
        pg_mat = -weight * adv * lp
        no_flag = torch.zeros_like(valid)
        surrogate = _Surrogate(pg_mat, ratio < 1.0 - eps_low, ratio > 1.0 + eps_high, no_flag)

    if token_weights is not None:
        pg_mat = pg_mat * token_weights.detach().to(pg_mat.dtype)
    row_weight = None
    if sample_weights is not None:
        row_weight = sample_weights.detach().to(pg_mat.dtype).reshape(-1, 1)
        pg_mat = pg_mat * row_weight
    counts = {
        "norm_constant": norm_constant,
        "global_token_count": global_token_count,
        "global_seq_count": global_seq_count,
    }
    pg_loss = aggregate(pg_mat, mask, mode, **counts)
    loss = pg_loss

    metrics: dict[str, Tensor] = {}
    if ref_log_probs is not None:
        ref = ref_log_probs.detach().float().where(valid, zero)
        kl_mat = kl_estimate(lp, ref, kl_estimator)
        metrics["kl"] = masked_mean(kl_mat.detach(), valid)
        if kl_coef > 0:
            if row_weight is not None:
                kl_mat = kl_mat * row_weight
            loss = loss + kl_coef * aggregate(kl_mat, mask, mode, **counts)

    with torch.no_grad():
        low = masked_mean(surrogate.clipped_low.float(), metric_mask)
        high = masked_mean(surrogate.clipped_high.float(), metric_mask)
        metrics.update(
            pg_loss=pg_loss.detach(),
            clip_frac=low + high,
            clip_frac_low=low,
            clip_frac_high=high,
            clip_frac_dual=masked_mean(surrogate.dual_clipped.float(), metric_mask),
            ppo_kl=masked_mean(-log_ratio, valid),
            log_ratio_abs_max=log_ratio.abs().where(valid, zero).amax() if valid.numel() else zero,
            ratio_mean=masked_mean(ratio, valid),
        )
    return LossOutput(loss=loss, metrics=metrics)


def _sequence_log_ratio(log_ratio: Tensor, valid: Tensor) -> Tensor:
    """[B] (1/|o_i|) Σ_t m·log ρ_{i,t} (0 for an empty row); ``log_ratio`` is 0 off the mask."""
    count = valid.sum(dim=1).clamp(min=1).to(log_ratio.dtype)
    return log_ratio.where(valid, log_ratio.new_zeros(())).sum(dim=1) / count
