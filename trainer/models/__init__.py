"""Policy models: the character tokenizer, the built-in transformer, the Hugging Face adapter,
the PPO value head and memory-frugal per-token log-probs.

Every model has ``forward(input_ids, attention_mask) -> hidden [B, T, H]``, ``lm_head`` (H → V),
``hidden_size``, ``vocab_size`` and ``forward_cached(input_ids, attention_mask, past) ->
(hidden, past)`` for KV-cached sampling.
"""

from rlkeel.trainer.models.device import autocast_for, default_device
from rlkeel.trainer.models.hf import HFCausalLM
from rlkeel.trainer.models.logprobs import DEFAULT_CHUNK_SIZE, sequence_log_probs, token_log_probs
from rlkeel.trainer.models.registry import MODEL_NAMES, ValueHead, build_model
from rlkeel.trainer.models.tiny import TinyCausalLM, TinyConfig, positions_from_mask
from rlkeel.trainer.models.tokenizer import CharTokenizer

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MODEL_NAMES",
    "CharTokenizer",
    "HFCausalLM",
    "TinyCausalLM",
    "TinyConfig",
    "ValueHead",
    "autocast_for",
    "build_model",
    "default_device",
    "positions_from_mask",
    "sequence_log_probs",
    "token_log_probs",
]
