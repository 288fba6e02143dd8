"""Build a policy model by name, and the PPO value head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rlkeel.trainer.models.hf import HFCausalLM, _require_transformers
from rlkeel.trainer.models.tiny import TinyCausalLM, TinyConfig
from rlkeel.trainer.models.tokenizer import CharTokenizer

BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "builtin-tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "builtin-small": {"hidden_size": 128, "num_layers": 4, "num_heads": 4},
}
MODEL_NAMES: tuple[str, ...] = (*BUILTIN_CONFIGS, "hf:<config-or-path>")


def build_model(name: str, tokenizer: CharTokenizer | Any, **cfg: Any) -> nn.Module:
    """A causal LM with ``forward(input_ids, attention_mask) -> hidden``, ``lm_head``,
    ``hidden_size``, ``vocab_size`` and ``forward_cached`` (KV cache).

    - ``builtin-tiny`` / ``builtin-small``: ``TinyCausalLM``; ``cfg`` overrides ``TinyConfig``.
    - ``hf:<name-or-path>``: ``from_pretrained`` (local path or hub name), or with
      ``from_config=True`` a randomly initialised model from that config (``cfg`` entries other
      than ``from_config`` override config fields). ``hf:`` followed by a ``PretrainedConfig``
      object is not possible in a string; pass ``config=`` instead: ``build_model("hf:", tok,
      config=LlamaConfig(...))``.
    """
    if name in BUILTIN_CONFIGS:
        merged = {**BUILTIN_CONFIGS[name], **cfg}
        merged.setdefault("vocab_size", len(tokenizer))
        return TinyCausalLM(TinyConfig(**merged))
    if name.startswith("hf:"):
        target = name[3:]
        config = cfg.pop("config", None)
        if config is not None:
            return HFCausalLM.from_config(config)
        if cfg.pop("from_config", False):
            transformers = _require_transformers()
            return HFCausalLM.from_config(transformers.AutoConfig.from_pretrained(target, **cfg))
        return HFCausalLM.from_pretrained(target, **cfg)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")


class ValueHead(nn.Module):
    """PPO critic head: hidden [B, T, H] → values [B, T] (float32), zero-initialised output."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1).float()
