"""The RL training loop (``Trainer``) and the data its hooks exchange."""

from rlkeel.trainer.loop.records import (
    LoopReport,
    PendingCommand,
    RolloutVerdict,
    UpdateBatch,
    lr_multiplier,
)
from rlkeel.trainer.loop.trainer import Trainer

__all__ = [
    "LoopReport",
    "PendingCommand",
    "RolloutVerdict",
    "Trainer",
    "UpdateBatch",
    "lr_multiplier",
]
