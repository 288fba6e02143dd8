"""Positive emphasis for rare successes (the design note §2.3, ALGORITHMS.md).

When success is rare the few positive samples are drowned by the negatives; three ways to
weigh them up, all returned as one :class:`Emphasis` the caller hands to ``policy_loss``
(``advantages=``, ``sample_weights=``, ``token_weights=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

EMPHASIS_MODES: Final[tuple[str, ...]] = ("sample_weight", "positive_tokens", "advantage_scale")


@dataclass(frozen=True)
class Emphasis:
    """``advantages``: same shape as given. ``sample_weights``: [B] or None.
    ``token_weights``: [B, T] (0/1) or None."""

    advantages: Tensor
    sample_weights: Tensor | None
    token_weights: Tensor | None


def apply_positive_emphasis(
    mode: str,
    advantages: Tensor,
    factor: float = 1.0,
    *,
    mask: Tensor | None = None,
    positive: Tensor | None = None,
) -> Emphasis:
    """Emphasise positive samples.

    A sample is *positive* when ``positive`` [B] (bool) says so — e.g. reward above its group
    mean — or otherwise when its advantage is > 0: Â_i for a [B] tensor, the mean of Â_t over
    the row's valid tokens for a [B, T] tensor (``mask`` needed then).

    - ``sample_weight``: ``sample_weights`` [B] = k (``factor``) for positive samples, else 1.
    - ``positive_tokens``: ``token_weights`` [B, T]: in a positive sample, a token with
      Â_t ≤ 0 gets 0 (its policy-gradient term is dropped; it stays in the normaliser) and a
      token with Â_t > 0 gets 1; non-positive samples get 1 everywhere. With per-sequence
      advantages every token of a positive sample has Â_t > 0, so this is a no-op: it matters
      for per-token advantages (GAE). ``factor`` is not used; ``mask`` is needed for the shape.
    - ``advantage_scale``: Â ← k·Â where Â > 0 (elementwise), others unchanged.
    """
    if mode not in EMPHASIS_MODES:
        raise ValueError(f"unknown positive emphasis {mode!r}; valid: {', '.join(EMPHASIS_MODES)}")
    if mode != "positive_tokens" and factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    adv = advantages.detach()
    if mode == "advantage_scale":
        return Emphasis(torch.where(adv > 0, adv * factor, adv), None, None)
    is_positive = _positive_samples(adv, mask) if positive is None else positive.bool()
    if mode == "sample_weight":
        dtype = adv.dtype if adv.is_floating_point() else torch.float32
        weights = torch.where(is_positive, factor, 1.0).to(dtype)
        return Emphasis(advantages, weights, None)
    if mask is None:
        raise ValueError("positive_tokens needs mask (the [B, T] shape of the weights)")
    token_adv = adv.unsqueeze(1).expand(mask.shape) if adv.dim() == 1 else adv
    drop = is_positive.unsqueeze(1) & (token_adv <= 0)
    dtype = adv.dtype if adv.is_floating_point() else torch.float32
    return Emphasis(advantages, None, (~drop).to(dtype))


def _positive_samples(adv: Tensor, mask: Tensor | None) -> Tensor:
    if adv.dim() == 1:
        return adv > 0
    if mask is None:
        raise ValueError("per-token advantages need mask to tell positive samples")
    valid = mask.bool()
    return adv.where(valid, adv.new_zeros(())).sum(dim=1) > 0
