"""A small pre-LN causal transformer in pure torch, for CPU demos and tests.

RoPE positions are derived from the attention mask (``cumsum - 1``), so a left-padded prompt
sees the same positions as the unpadded one, and the incremental KV-cache path computes the same
numbers as a full forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# One (key, value) pair per layer, each [B, heads, T_past, head_dim].
KVCache = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ff_mult: int = 4
    rope_base: float = 10_000.0
    tie_embeddings: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position of every token counting only the real ones before it; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _rope(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotary embedding (Su et al., arXiv 2104.09864) of x [B, h, T, d] at positions [B, T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq  # [B, 1, T, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class _Attention(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        self.heads, self.head_dim, self.rope_base = (
            cfg.num_heads, cfg.hidden_size // cfg.num_heads, cfg.rope_base)  # fmt: skip
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, positions, self.rope_base), _rope(k, positions, self.rope_base)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class _Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.hidden_size), nn.LayerNorm(cfg.hidden_size)
        self.attn = _Attention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.ff_mult * cfg.hidden_size), nn.GELU(),
            nn.Linear(cfg.ff_mult * cfg.hidden_size, cfg.hidden_size),
        )  # fmt: skip

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
        a, kv = self.attn(self.ln1(x), positions, allowed, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class TinyCausalLM(nn.Module):
    """Pre-LN decoder: embeddings → blocks (RoPE attention + GELU MLP) → final LayerNorm.

    ``forward`` returns hidden states [B, T, H]; logits are ``lm_head(hidden)`` (kept separate so
    log-probs can be computed in chunks, see ``token_log_probs``).
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states [B, T, H] for input_ids [B, T]; attention_mask [B, T] (1 = real token)."""
        hidden, _ = self.forward_cached(input_ids, attention_mask, None)
        return hidden

    def forward_cached(self, input_ids: Tensor, attention_mask: Tensor | None,
                       past: KVCache | None) -> tuple[Tensor, KVCache]:  # fmt: skip
        """Incremental forward. ``attention_mask`` covers past and new tokens [B, T_past+T]."""
        b, t = input_ids.shape
        t_past = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(b, t_past + t, dtype=torch.long, device=input_ids.device)
        positions = positions_from_mask(attention_mask)[:, t_past:]
        q_idx = torch.arange(t_past, t_past + t, device=input_ids.device)[:, None]
        k_idx = torch.arange(t_past + t, device=input_ids.device)[None, :]
        # A query attends to earlier real tokens and always to itself (so a pad row is never
        # fully masked, which would make softmax NaN).
        allowed = ((k_idx <= q_idx) & attention_mask.bool()[:, None, None, :]) | (k_idx == q_idx)
        x = self.embed(input_ids)
        new_past: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, positions, allowed, None if past is None else past[i])
            new_past.append(kv)
        return self.ln_f(x), new_past
