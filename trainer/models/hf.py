"""Adapter giving any Hugging Face causal LM the built-in model's interface.

``transformers`` is imported lazily: the trainer runs without it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from rlkeel.trainer.models.tiny import positions_from_mask


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Hugging Face models need `transformers`: pip install transformers"
        ) from exc
    return transformers


class HFCausalLM(nn.Module):
    """Wraps an ``AutoModelForCausalLM``: ``forward`` → last hidden state [B, T, H].

    The decoder (``base_model``) is called instead of the full model so the [B, T, V] logits are
    never built here; ``lm_head`` is the model's output embedding (tied or not).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self.decoder = model.base_model
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head)")
        self.lm_head = head
        # transformers 5.x renamed `past_key_values` to `cache`; accept both generations.
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> HFCausalLM:
        """A randomly initialised model from a ``PretrainedConfig`` (no download)."""
        transformers = _require_transformers()
        return cls(transformers.AutoModelForCausalLM.from_config(config, **kwargs))

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFCausalLM:
        transformers = _require_transformers()
        return cls(transformers.AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))

    @property
    def hidden_size(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden, _ = self.forward_cached(input_ids, attention_mask, None, use_cache=False)
        return hidden

    def forward_cached(self, input_ids: Tensor, attention_mask: Tensor | None, past: Any,
                       *, use_cache: bool = True) -> tuple[Tensor, Any]:  # fmt: skip
        """Incremental forward; ``attention_mask`` covers past and new tokens."""
        b, t = input_ids.shape
        if attention_mask is None:
            t_past = 0 if past is None else int(past.get_seq_length())
            attention_mask = torch.ones(b, t_past + t, dtype=torch.long, device=input_ids.device)
        positions = positions_from_mask(attention_mask)[:, -t:]
        out = self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
            use_cache=use_cache, **{self._cache_arg: past},
        )  # fmt: skip
        return out.last_hidden_state, (getattr(out, self._cache_arg) if use_cache else None)
