"""Verifiable toy tasks (``addition``, ``reverse``, ``sort``) and the supervised warm start."""

from rlkeel.trainer.tasks.base import Prompt, Task, get_task, register_task, task_names
from rlkeel.trainer.tasks.toy import AdditionTask, ReverseTask, SortTask
from rlkeel.trainer.tasks.warmup import (
    WarmStart,
    default_cache_dir,
    evaluate_success,
    supervised_warmup,
    warm_start_policy,
)

__all__ = [
    "AdditionTask",
    "Prompt",
    "ReverseTask",
    "SortTask",
    "Task",
    "WarmStart",
    "default_cache_dir",
    "evaluate_success",
    "get_task",
    "register_task",
    "supervised_warmup",
    "task_names",
    "warm_start_policy",
]
