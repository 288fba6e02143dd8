"""Per-token KL estimators between the policy and a reference (Schulman, "Approximating KL
Divergence", 2020). Used as GRPO's β·k3 loss term (arXiv 2402.03300) and as a per-token
reward penalty for PPO with GAE.
"""

from __future__ import annotations

from typing import Final

from torch import Tensor

KL_ESTIMATORS: Final[tuple[str, ...]] = ("k1", "k2", "k3")

# The log-ratio is clamped before exp so a stale reference cannot overflow to inf.
_LOG_RATIO_CLAMP: Final[float] = 20.0


def kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, name: str = "k3") -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from sampled tokens.

    Args:
        log_probs: [B, T] log π_θ of the sampled tokens.
        ref_log_probs: [B, T] log π_ref of the same tokens.
        name: ``k1`` = log π_θ − log π_ref (unbiased, can be negative);
            ``k2`` = ½ (log π_θ − log π_ref)² (biased, non-negative);
            ``k3`` = exp(d) − d − 1 with d = log π_ref − log π_θ (unbiased, non-negative).

    Returns:
        [B, T] estimate; the caller masks and aggregates it. Gradients flow into ``log_probs``.
    """
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; valid: {', '.join(KL_ESTIMATORS)}")
    diff = (ref_log_probs - log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    if name == "k1":
        return -diff
    if name == "k2":
        return 0.5 * diff.square()
    return diff.exp() - diff - 1.0
