"""Aggregation of a per-token loss matrix into the scalar that is minimised.

Kept apart from the losses because the normaliser is a choice of its own: DAPO (arXiv
2503.14476) argues for ``token_mean``; GRPO (arXiv 2402.03300) and GSPO (arXiv 2507.18071)
use ``seq_mean_token_mean``; Dr. GRPO (arXiv 2503.20783) uses ``seq_mean_token_sum_norm``
to remove the length bias.

Rows whose mask is all zero (dropped or masked samples) leave every normaliser. Under DDP
pass the global counts (``global_token_count``, ``global_seq_count``): the result is then
this rank's share of the global-batch loss, so the sum over ranks is the loss of the whole
batch (with DDP's gradient *averaging*, multiply by the world size or pass count/world_size).
"""

from __future__ import annotations

from typing import Final

from torch import Tensor

AGGREGATIONS: Final[tuple[str, ...]] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
)


def check_aggregation(mode: str) -> None:
    """Raise ``ValueError`` listing the valid modes when ``mode`` is not one of them."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    norm_constant: float | None = None,
    global_token_count: Tensor | float | None = None,
    global_seq_count: Tensor | float | None = None,
) -> Tensor:
    """Reduce ``loss_mat`` [B, T] under ``mask`` [B, T] (1 on response tokens) to a 0-dim tensor.

    - ``token_mean``: Σ m·ℓ / Σ m (``global_token_count`` replaces Σ m).
    - ``seq_mean_token_mean``: Σ_i [(Σ_t m·ℓ)/(Σ_t m)] / N_seq over non-empty rows
      (``global_seq_count`` replaces N_seq).
    - ``seq_mean_token_sum_norm``: Σ m·ℓ / (N_seq · C), C = ``norm_constant`` or T
      (``mask.shape[1]``, the padded response length).

    Masked positions are selected out with ``where`` so a non-finite value there cannot leak
    into the result or its gradient. An empty batch gives 0, not NaN.
    """
    check_aggregation(mode)
    valid = mask.bool()
    m = valid.to(loss_mat.dtype)
    masked = loss_mat.where(valid, loss_mat.new_zeros(()))
    if mode == "token_mean":
        count = m.sum() if global_token_count is None else global_token_count
        return masked.sum() / _at_least_one(count, loss_mat)
    row_tokens = m.sum(dim=1)
    row_has_tokens = (row_tokens > 0).to(loss_mat.dtype)
    n_seq = row_has_tokens.sum() if global_seq_count is None else global_seq_count
    n_seq = _at_least_one(n_seq, loss_mat)
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(dim=1) / row_tokens.clamp(min=1.0)
        return (per_seq * row_has_tokens).sum() / n_seq
    constant = float(mask.shape[1]) if norm_constant is None else float(norm_constant)
    if constant <= 0:
        raise ValueError(f"norm_constant must be positive, got {constant}")
    return masked.sum() / (n_seq * constant)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """0-dim mean of ``values`` over ``mask`` (0 when the mask is empty); no host sync."""
    valid = mask.bool()
    total = values.where(valid, values.new_zeros(())).sum()
    return total / valid.sum().clamp(min=1).to(values.dtype)


def _at_least_one(count: Tensor | float, like: Tensor) -> Tensor:
    """The count as a tensor on ``like``'s device, floored at 1 so an empty batch gives 0."""
    if isinstance(count, Tensor):
        return count.to(device=like.device, dtype=like.dtype).clamp(min=1.0)
    return like.new_tensor(max(float(count), 1.0))
