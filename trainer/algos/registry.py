"""Each algorithm's defaults by name: the loss, its advantage estimator, aggregation and clip
range. Switching GRPO → GSPO is not a flag flip (ALGORITHMS.md): the clip range drops from 0.2
to 3e-4/4e-4, the ratio becomes a sequence ratio and the expected clip fraction rises ~100×;
the trainer reads the new defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True)
class AlgorithmSpec:
    """Defaults of one policy-loss algorithm.

    Attributes:
        name: the algorithm (also the loss name for :func:`policy_loss`).
        advantage_estimator: ``gae``, ``grpo``, ``dr_grpo`` or ``rloo``.
        aggregation: ``token_mean``, ``seq_mean_token_mean`` or ``seq_mean_token_sum_norm``.
        clip_eps_low, clip_eps_high: the clip range [1 − ε_low, 1 + ε_high] of the ratio
            (for CISPO: of the importance weight).
        dual_clip_c: the dual-clip constant c (> 1) or None when off.
        uses_kl_in_loss: whether the loss carries a β·KL-to-reference term by default.
        token_level: False when the ratio is per sequence (GSPO).
        paper: arXiv id.
    """

    name: str
    advantage_estimator: str
    aggregation: str
    clip_eps_low: float
    clip_eps_high: float
    dual_clip_c: float | None
    uses_kl_in_loss: bool
    token_level: bool
    paper: str

    @property
    def loss(self) -> str:
        """The loss name for :func:`policy_loss` (equal to the algorithm name)."""
        return self.name


_SPECS: Final[tuple[AlgorithmSpec, ...]] = (
    AlgorithmSpec("ppo", "gae", "token_mean", 0.2, 0.2, None, False, True, "1707.06347"),
    AlgorithmSpec("grpo", "grpo", "seq_mean_token_mean", 0.2, 0.2, None, True, True, "2402.03300"),
    AlgorithmSpec("dapo", "grpo", "token_mean", 0.2, 0.28, None, False, True, "2503.14476"),
    AlgorithmSpec(
        "gspo", "grpo", "seq_mean_token_mean", 3e-4, 4e-4, None, False, False, "2507.18071"
    ),
    AlgorithmSpec(
        "gspo_token", "grpo", "seq_mean_token_mean", 3e-4, 4e-4, None, False, False, "2507.18071"
    ),
    AlgorithmSpec(
        "dr_grpo", "dr_grpo", "seq_mean_token_sum_norm", 0.2, 0.2, None, False, True, "2503.20783"
    ),
    # MiniMax-M1 sets no lower bound on the IS weight (ε_low large: 1 − 1 = 0) and tunes ε_high.
    AlgorithmSpec("cispo", "grpo", "token_mean", 1.0, 0.28, None, False, True, "2506.13585"),
)

LOSS_DEFAULTS: Final = MappingProxyType({spec.name: spec for spec in _SPECS})
POLICY_LOSSES: Final[tuple[str, ...]] = tuple(LOSS_DEFAULTS)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The defaults of ``name``; ``ValueError`` listing the valid names when unknown."""
    try:
        return LOSS_DEFAULTS[name]
    except KeyError:
        raise ValueError(
            f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)}"
        ) from None
