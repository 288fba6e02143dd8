"""DAPO's rollout-side helpers (arXiv 2503.14476): soft overlong punishment and the keep-mask
of dynamic sampling."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from rlkeel.trainer.algos.advantages import group_index


def soft_overlong_penalty(lengths: Tensor | Sequence[int], max_len: int, buffer: int) -> Tensor:
    """[B] reward penalty for response lengths |y| [B], with L_max = ``max_len`` and the buffer
    L_c = ``buffer``: 0 if |y| ≤ L_max − L_c; ((L_max − L_c) − |y|)/L_c inside the buffer
    (falling linearly to −1 at L_max); −1 beyond L_max. Added to the task reward."""
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"buffer must be in [0, max_len]; got {buffer} with max_len {max_len}")
    length = torch.as_tensor(lengths).float()
    start = float(max_len - buffer)
    inside = (start - length) / buffer if buffer > 0 else torch.zeros_like(length)
    penalty = torch.where(length <= start, torch.zeros_like(length), inside)
    return torch.where(length > max_len, torch.full_like(length, -1.0), penalty)


def dynamic_sampling_keep(rewards: Tensor, group_ids: Tensor | Sequence[Hashable]) -> Tensor:
    """[B] bool: True for samples whose group's rewards are not all equal (DAPO keeps groups
    with 0 < #correct < G; an all-equal group has zero advantage and no gradient). A
    singleton group is all-equal and is dropped."""
    r = rewards.reshape(-1)
    index = group_index(group_ids, device=r.device)
    if r.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=r.device)
    base = r.new_zeros(r.shape[0])
    high = base.scatter_reduce(0, index, r, "amax", include_self=False)
    low = base.scatter_reduce(0, index, r, "amin", include_self=False)
    return (high != low)[index]
