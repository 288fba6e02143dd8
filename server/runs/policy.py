"""A run's policy: stored in full after validation; a run without one uses the defaults."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from pydantic import ValidationError

from rlkeel.server.api.errors import ValidationFailed
from rlkeel.server.db.models import Run
from rlkeel.server.policy import PolicyConfig


def effective_policy(run: Run) -> PolicyConfig:
    """The run's policy; the defaults when it has none. Callers only read it (the defaults
    are one shared instance: validating them costs ~0.3 ms, on every report)."""
    if not run.policy:
        return _defaults()
    return PolicyConfig.model_validate(run.policy)


@functools.cache
def _defaults() -> PolicyConfig:
    return PolicyConfig()


def validate_policy(body: Any) -> PolicyConfig:
    """The policy a PUT asks for, or a 422 naming the offending field."""
    if not isinstance(body, dict):
        raise ValidationFailed("body: the policy must be a JSON object", fields=["body"])
    try:
        policy = PolicyConfig.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        fields = []
        for e in errors:
            path = ".".join(str(p) for p in e["loc"])
            if not path:  # a cross-field check: its message starts with the field it is about
                match = re.match(r"(?:Value error, )?([\w.]+):", e["msg"])
                path = match.group(1) if match else "body"
            fields.append(path)
        msg = errors[0]["msg"].removeprefix("Value error, ")
        detail = msg if msg.startswith(fields[0]) else f"{fields[0]}: {msg}"
        raise ValidationFailed(detail, fields=fields) from None
    _require_finite(policy.model_dump(mode="python"), "")
    return policy


def _require_finite(value: Any, path: str) -> None:
    """NaN or ±inf as a threshold or bound means nothing (and jsonb cannot store it)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _require_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationFailed(f"{path}: must be a finite number", fields=[path])
