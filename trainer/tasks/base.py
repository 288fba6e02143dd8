"""Verifiable toy tasks: a seeded prompt generator and an exact reward."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One prompt: the text the policy continues, the reference answer, and free metadata
    (task name, operands...). Samples of one prompt form a group."""

    text: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A task draws prompts from a ``random.Random`` (so a seed fixes them) and scores a
    response text (the decoded tokens before ``<eos>``)."""

    name: str = ""

    @abstractmethod
    def sample(self, n: int, generator: random.Random) -> list[Prompt]: ...

    @abstractmethod
    def reward(self, prompt: Prompt, response_text: str) -> float: ...

    @property
    @abstractmethod
    def max_answer_length(self) -> int:
        """Longest correct answer in characters (a floor for ``max_new_tokens`` minus eos)."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for cache keys and run configs."""
        return {"name": self.name}


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        _TASKS[name] = cls
        cls.name = name
        return cls

    return wrap


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """The task registered as ``name``, built with ``kwargs`` (e.g. ``digits=3``)."""
    try:
        factory = _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}") from None
    return factory(**kwargs)
