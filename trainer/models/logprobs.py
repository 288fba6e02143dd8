"""Per-token log-probs and entropy without materialising the full [B, T, V] logits.

With a 150k vocabulary the logits of one batch dwarf the model's activations, and the naive
``log_softmax(lm_head(h))`` keeps a float32 [B, T, V] copy alive for backward (several, with the
softmax output and the gradient). Here ``lm_head`` + ``log_softmax`` run over chunks of positions
under ``torch.utils.checkpoint``: only the chunk's logits exist at any time, nothing of size V is
saved for backward, and backward recomputes each chunk's logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_SIZE = 1024  # positions (rows of B*T) per chunk


def _chunk_log_probs(head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float,
                     entropy_grad: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        src = logp if entropy_grad else logp.detach()
        entropy = -(src.exp() * src).sum(-1)
    return picked, entropy


def token_log_probs(model: nn.Module, hidden: Tensor, targets: Tensor, mask: Tensor | None = None,
                    *, chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 1.0,
                    entropy_grad: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """log π(targets | hidden) and the entropy of π, both float32 [B, T].

    ``hidden`` [B, T, H] are the states *predicting* ``targets`` [B, T] (the caller shifts).
    Positions where ``mask`` [B, T] is 0 are skipped and read 0. ``model.lm_head`` (or ``model``
    itself when it is the head) maps H → V. Entropy carries gradient only with
    ``entropy_grad=True`` (for an entropy bonus).
    """
    head = getattr(model, "lm_head", model)
    b, t, h = hidden.shape
    flat_hidden, flat_targets = hidden.reshape(b * t, h), targets.reshape(b * t)
    index: Tensor | None = None
    if mask is not None:
        index = mask.reshape(b * t).nonzero().squeeze(-1)
        flat_hidden, flat_targets = flat_hidden.index_select(0, index), flat_targets[index]
    picked_parts: list[Tensor] = []
    entropy_parts: list[Tensor] = []
    needs_grad = torch.is_grad_enabled() and (
        flat_hidden.requires_grad or any(p.requires_grad for p in head.parameters()))  # fmt: skip
    for start in range(0, flat_hidden.shape[0], chunk_size):
        args = (head, flat_hidden[start:start + chunk_size], flat_targets[start:start + chunk_size],
                temperature, entropy_grad)  # fmt: skip
        if needs_grad:
            picked, entropy = checkpoint(_chunk_log_probs, *args, use_reentrant=False)
        else:
            picked, entropy = _chunk_log_probs(*args)
        picked_parts.append(picked)
        entropy_parts.append(entropy)
    device = hidden.device
    picked_flat = (torch.cat(picked_parts) if picked_parts
                   else torch.zeros(0, device=device, dtype=torch.float32))  # fmt: skip
    entropy_flat = (torch.cat(entropy_parts) if entropy_parts
                    else torch.zeros(0, device=device, dtype=torch.float32))  # fmt: skip
    if index is None:
        return picked_flat.view(b, t), entropy_flat.view(b, t)
    out_lp = picked_flat.new_zeros(b * t).index_copy(0, index, picked_flat)
    out_ent = entropy_flat.new_zeros(b * t).index_copy(0, index, entropy_flat)
    return out_lp.view(b, t), out_ent.view(b, t)


def sequence_log_probs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                       response_mask: Tensor | None = None, *,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 1.0,
                       entropy_grad: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Log-prob of each token of ``input_ids`` [B, T] given the ones before it, and the entropy
    of that prediction, aligned with ``input_ids``: column t scores token t (column 0 reads 0).

    This is what the training loop calls for π_θ, with a ``RolloutBatch``'s ``input_ids``,
    ``attention_mask``, ``response_mask`` and ``temperature``; it reproduces
    ``RolloutBatch.old_log_probs`` exactly for an unchanged model.
    """
    hidden = model(input_ids, attention_mask)
    mask = None if response_mask is None else response_mask[:, 1:]
    lp, ent = token_log_probs(model, hidden[:, :-1], input_ids[:, 1:], mask,
                              chunk_size=chunk_size, temperature=temperature,
                              entropy_grad=entropy_grad)  # fmt: skip
    pad = lp.new_zeros(lp.shape[0], 1)
    return torch.cat((pad, lp), dim=1), torch.cat((pad, ent), dim=1)
