"""RL algorithms as pure torch functions, registered by name (DESIGN §5, ALGORITHMS.md).

Losses ``ppo grpo dapo gspo gspo_token dr_grpo cispo``; advantages ``gae grpo dr_grpo rloo``;
aggregations ``token_mean seq_mean_token_mean seq_mean_token_sum_norm``; KL ``k1 k2 k3``.
Unknown names raise ``ValueError`` listing the valid ones. No function reads a value back to
the host.
"""

from rlkeel.trainer.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    GROUP_ADVANTAGES,
    compute_advantages,
    gae,
    group_index,
    token_rewards_for_gae,
    whiten,
)
from rlkeel.trainer.algos.aggregation import AGGREGATIONS, aggregate, masked_mean
from rlkeel.trainer.algos.critic import explained_variance, value_loss
from rlkeel.trainer.algos.dapo import dynamic_sampling_keep, soft_overlong_penalty
from rlkeel.trainer.algos.emphasis import EMPHASIS_MODES, Emphasis, apply_positive_emphasis
from rlkeel.trainer.algos.kl import KL_ESTIMATORS, kl_estimate
from rlkeel.trainer.algos.losses import LOG_RATIO_CLAMP, LossOutput, policy_loss
from rlkeel.trainer.algos.registry import (
    LOSS_DEFAULTS,
    POLICY_LOSSES,
    AlgorithmSpec,
    algorithm_spec,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "EMPHASIS_MODES",
    "GROUP_ADVANTAGES",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "LOSS_DEFAULTS",
    "POLICY_LOSSES",
    "AlgorithmSpec",
    "Emphasis",
    "LossOutput",
    "aggregate",
    "algorithm_spec",
    "apply_positive_emphasis",
    "compute_advantages",
    "dynamic_sampling_keep",
    "explained_variance",
    "gae",
    "group_index",
    "kl_estimate",
    "masked_mean",
    "policy_loss",
    "soft_overlong_penalty",
    "token_rewards_for_gae",
    "value_loss",
    "whiten",
]
