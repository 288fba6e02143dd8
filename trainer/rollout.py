"""Sampling G responses per prompt with a KV cache, and the tensors the update needs.

Layout of a ``RolloutBatch`` (B = prompts × group_size, T = P + R):

- columns ``[0, P)`` hold the prompt (``<bos>`` + text), **left-padded** so every prompt ends at
  column P-1 and generation appends in lock-step; columns ``[P, T)`` hold the response,
  **right-padded** with ``<pad>`` after its ``<eos>``. R ≤ ``max_new_tokens`` (generation stops
  early once every row has ended).
- ``attention_mask`` is 1 on real tokens (prompt, response, eos); positions come from its
  cumulative sum, so padding never shifts them.
- per-token tensors are aligned with ``input_ids``: column t scores token t given tokens < t.
  ``response_mask`` is 1 on response tokens including ``<eos>``; ``old_log_probs``,
  ``ref_log_probs`` and ``entropy`` are 0 outside it.
- ``old_log_probs`` are recomputed after sampling in one full forward pass with
  ``sequence_log_probs`` at the sampling temperature, so a loss that calls
  ``sequence_log_probs(model, batch.input_ids, batch.attention_mask, batch.response_mask,
  temperature=batch.temperature)`` on the unchanged model gets a ratio of exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from rlkeel.trainer.models.device import autocast_for
from rlkeel.trainer.models.logprobs import DEFAULT_CHUNK_SIZE, sequence_log_probs
from rlkeel.trainer.models.tokenizer import CharTokenizer
from rlkeel.trainer.rollout_stats import (
    max_abs_log_ratio,
    repetition_share,
    rollout_step_metrics,
    sample_stats,
)
from rlkeel.trainer.tasks.base import Prompt, Task

__all__ = [
    "RolloutBatch",
    "compute_rewards",
    "generate",
    "max_abs_log_ratio",
    "repetition_share",
    "rollout_step_metrics",
    "sample_stats",
]


@dataclass
class RolloutBatch:
    """One step's samples. Tensors are [B, T] unless noted; lists have B entries."""

    input_ids: Tensor
    """Prompt (left-padded) + response (right-padded), long."""
    attention_mask: Tensor
    """1 on real tokens, long."""
    response_mask: Tensor
    """1.0 on response tokens including ``<eos>``, float32."""
    old_log_probs: Tensor
    """log π_old of each response token, float32."""
    ref_log_probs: Tensor | None
    """log π_ref of each response token, when a reference model was given."""
    entropy: Tensor
    """Entropy of π_old at each response token, float32."""
    truncated: Tensor
    """[B] bool: hit ``max_new_tokens`` without ``<eos>``."""
    eos_seen: Tensor
    """[B] bool: the response ended with ``<eos>``."""
    lengths: Tensor
    """[B] long: response tokens, ``<eos>`` included (= ``response_mask.sum(1)``)."""
    group_index: Tensor
    """[B] long: index of the prompt within the step (samples of one prompt share it)."""
    prompts: list[Prompt]
    """The prompt of each sample."""
    response_texts: list[str]
    """Decoded response, without ``<eos>``."""
    group_ids: list[str]
    """Wire group id of each sample: ``s{step}-g{prompt index}``."""
    sample_ids: list[str]
    """Wire sample id: ``s{step}-{i}``."""
    prompt_width: int
    """P: number of prompt columns."""
    temperature: float
    """Sampling temperature (pass it to ``sequence_log_probs`` in the loss)."""
    step: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def select(self, keep: Tensor | Sequence[bool] | Sequence[int]) -> RolloutBatch:
        """The sub-batch of rows where ``keep`` is true (a bool mask [B]) or of the given row
        indices. Ids stay as they were, so a verdict's sample ids still match."""
        keep_t = torch.as_tensor(keep)
        if keep_t.dtype == torch.bool:
            if keep_t.numel() != len(self):
                raise ValueError(f"keep mask has {keep_t.numel()} entries for {len(self)} rows")
            index = keep_t.nonzero().flatten()
        else:
            index = keep_t.long().flatten()
        rows = index.tolist()
        changes: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.index_select(0, index.to(value.device))
            elif isinstance(value, list):
                changes[f.name] = [value[i] for i in rows]
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> RolloutBatch:
        changes = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}  # fmt: skip
        return replace(self, **changes)


def compute_rewards(task: Task, batch: RolloutBatch) -> Tensor:
    """[B] float32 rewards of the batch's responses under ``task`` (on the batch's device)."""
    values = [task.reward(p, text) for p, text in zip(batch.prompts, batch.response_texts,
                                                         strict=True)]  # fmt: skip
    return torch.tensor(values, dtype=torch.float32, device=batch.device)


def _sample_next(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator
                                 ).squeeze(-1).to(logits.device)  # fmt: skip
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, tokenizer: CharTokenizer, prompts: Sequence[Prompt], *,
             group_size: int = 1, max_new_tokens: int = 16, temperature: float = 1.0,
             generator: torch.Generator | None = None, seed: int | None = None,
             device: torch.device | str | None = None, ref_model: nn.Module | None = None,
             step: int = 0, use_cache: bool = True,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> RolloutBatch:  # fmt: skip
    """Sample ``group_size`` responses to each prompt (rows ``i*G .. i*G+G-1`` answer prompt i).

    ``temperature=0`` is greedy. Randomness comes from ``generator``, else a fresh generator
    seeded with ``seed``, else torch's global RNG. ``use_cache=False`` recomputes the whole
    prefix each token (for tests). The model is put in eval mode and restored afterwards.
    """
    if group_size < 1 or max_new_tokens < 0:
        raise ValueError("need group_size >= 1 and max_new_tokens >= 0")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if generator is None and seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        expanded = [p for p in prompts for _ in range(group_size)]
        encoded = [tokenizer.encode(p.text, add_bos=True) for p in expanded]
        width = max((len(e) for e in encoded), default=1)
        ids = torch.full((len(encoded), width), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = 1
        ids, mask = ids.to(device), mask.to(device)
        response_ids, response_mask = _sample_tokens(
            model, ids, mask, tokenizer, max_new_tokens, temperature, generator, use_cache,
            device,
        )  # fmt: skip
        return _assemble(model, ref_model, tokenizer, expanded, ids, mask, response_ids,
                         response_mask, group_size, temperature, step, chunk_size, device)  # fmt: skip
    finally:
        model.train(was_training)


def _sample_tokens(model: nn.Module, ids: Tensor, mask: Tensor, tokenizer: CharTokenizer,
                   max_new_tokens: int, temperature: float, generator: torch.Generator | None,
                   use_cache: bool, device: torch.device) -> tuple[Tensor, Tensor]:  # fmt: skip
    b = ids.shape[0]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    tokens: list[Tensor] = []
    active: list[Tensor] = []
    all_ids, all_mask = ids, mask
    with autocast_for(device):
        hidden, past = (model.forward_cached(ids, mask, None) if use_cache
                        else (model(ids, mask), None))  # fmt: skip
        for _ in range(max_new_tokens):
            logits = model.lm_head(hidden[:, -1]).float()
            token = _sample_next(logits, temperature, generator)
            live = ~finished
            token = torch.where(live, token, torch.full_like(token, tokenizer.pad_id))
            tokens.append(token)
            active.append(live)
            finished = finished | (token == tokenizer.eos_id)
            if bool(finished.all()):
                break
            all_ids = torch.cat((all_ids, token[:, None]), dim=1)
            all_mask = torch.cat((all_mask, live.long()[:, None]), dim=1)
            if use_cache:
                hidden, past = model.forward_cached(token[:, None], all_mask, past)
            else:
                hidden = model(all_ids, all_mask)
    if not tokens:
        empty = torch.zeros(b, 0, dtype=torch.long, device=device)
        return empty, empty
    return torch.stack(tokens, dim=1), torch.stack(active, dim=1).long()


def _assemble(model: nn.Module, ref_model: nn.Module | None, tokenizer: CharTokenizer,
              expanded: list[Prompt], ids: Tensor, mask: Tensor, response_ids: Tensor,
              response_active: Tensor, group_size: int, temperature: float, step: int,
              chunk_size: int, device: torch.device) -> RolloutBatch:  # fmt: skip
    b, width = ids.shape
    temperature = temperature if temperature > 0 else 1.0  # greedy: score under π itself
    input_ids = torch.cat((ids, response_ids), dim=1)
    attention_mask = torch.cat((mask, response_active), dim=1)
    response_mask = torch.cat((torch.zeros_like(mask), response_active), dim=1).float()
    with autocast_for(device):
        old_lp, entropy = sequence_log_probs(model, input_ids, attention_mask, response_mask,
                                             chunk_size=chunk_size, temperature=temperature)  # fmt: skip
        ref_lp = None
        if ref_model is not None:
            ref_lp, _ = sequence_log_probs(ref_model, input_ids, attention_mask, response_mask,
                                           chunk_size=chunk_size, temperature=temperature)  # fmt: skip
    lengths = response_active.sum(1)
    eos_seen = (response_ids == tokenizer.eos_id).any(1)
    rows = response_ids.tolist()
    group_index = torch.arange(b, device=device) // group_size
    return RolloutBatch(
        input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
        old_log_probs=old_lp, ref_log_probs=ref_lp, entropy=entropy, truncated=~eos_seen,
        eos_seen=eos_seen, lengths=lengths, group_index=group_index, prompts=expanded,
        response_texts=[tokenizer.decode(r) for r in rows],
        group_ids=[f"s{step}-g{g}" for g in group_index.tolist()],
        sample_ids=[f"s{step}-{i}" for i in range(b)], prompt_width=width,
        temperature=temperature, step=step,
    )  # fmt: skip
