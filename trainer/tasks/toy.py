"""The built-in tasks: ``addition``, ``reverse``, ``sort``."""

from __future__ import annotations

import random
import string
from typing import Any

from rlkeel.trainer.tasks.base import Prompt, Task, register_task


def _positional_credit(answer: str, response: str) -> float:
    """Share of answer characters matched position by position, aligned on the right (digits
    of a sum line up by place value), over the longer of the two strings."""
    width = max(len(answer), len(response))
    if width == 0:
        return 1.0
    hits = sum(a == r for a, r in zip(reversed(answer), reversed(response), strict=False))
    return hits / width


@register_task("addition")
class AdditionTask(Task):
    """``12+345=`` → ``357``. Operands have 1..``digits`` digits (uniform in the number of
    digits, then in the value). Reward 1.0 for the exact sum, else 0.0 — or, with
    ``partial_credit``, ``partial_credit × share of digits right`` (off by default: partial
    credit invites reward hacking on the leading digits)."""

    def __init__(self, digits: int = 2, *, partial_credit: float = 0.0) -> None:
        if digits < 1:
            raise ValueError("digits must be >= 1")
        if not 0.0 <= partial_credit < 1.0:
            raise ValueError("partial_credit must be in [0, 1)")
        self.digits, self.partial_credit = digits, partial_credit

    def _operand(self, rng: random.Random) -> int:
        d = rng.randint(1, self.digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)

    def sample(self, n: int, generator: random.Random) -> list[Prompt]:
        out = []
        for _ in range(n):
            a, b = self._operand(generator), self._operand(generator)
            out.append(Prompt(f"{a}+{b}=", str(a + b), {"task": self.name, "a": a, "b": b}))
        return out

    def reward(self, prompt: Prompt, response_text: str) -> float:
        response = response_text.strip()
        if response == prompt.answer:
            return 1.0
        if self.partial_credit and response.isdigit():
            return self.partial_credit * _positional_credit(prompt.answer, response)
        return 0.0

    @property
    def max_answer_length(self) -> int:
        return self.digits + 1

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "digits": self.digits, "partial_credit": self.partial_credit}


class _StringTask(Task):
    """A random lowercase word of ``min_len..max_len`` letters from the first ``alphabet``
    letters; prompt ``<verb> <word>=``; reward 1.0 for the exact transform."""

    verb = ""

    def __init__(self, min_len: int = 3, max_len: int = 6, alphabet: int = 26) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        if not 2 <= alphabet <= 26:
            raise ValueError("alphabet must be in 2..26")
        self.min_len, self.max_len = min_len, max_len
        self.letters = string.ascii_lowercase[:alphabet]

    def transform(self, word: str) -> str:
        raise NotImplementedError

    def sample(self, n: int, generator: random.Random) -> list[Prompt]:
        out = []
        for _ in range(n):
            word = "".join(generator.choice(self.letters)
                           for _ in range(generator.randint(self.min_len, self.max_len)))  # fmt: skip
            out.append(Prompt(f"{self.verb} {word}=", self.transform(word),
                              {"task": self.name, "word": word}))  # fmt: skip
        return out

    def reward(self, prompt: Prompt, response_text: str) -> float:
        return 1.0 if response_text.strip() == prompt.answer else 0.0

    @property
    def max_answer_length(self) -> int:
        return self.max_len

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "min_len": self.min_len, "max_len": self.max_len,
                "alphabet": len(self.letters)}  # fmt: skip


@register_task("reverse")
class ReverseTask(_StringTask):
    """``rev abc=`` → ``cba``."""

    verb = "rev"

    def transform(self, word: str) -> str:
        return word[::-1]


@register_task("sort")
class SortTask(_StringTask):
    """``sort dbca=`` → ``abcd``."""

    verb = "sort"

    def transform(self, word: str) -> str:
        return "".join(sorted(word))
