"""The parameters each command kind takes (DESIGN §3), validated before a command is stored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlkeel.client.schemas import Algorithm
from rlkeel.server.api.errors import ValidationFailed


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SkipStep(_Params):
    pass


class SwitchAlgorithm(_Params):
    to: Algorithm
    overrides: dict[str, Any] = Field(default_factory=dict)


class PositiveEmphasis(_Params):
    mode: Literal["sample_weight", "positive_tokens", "advantage_scale"]
    factor: float = Field(default=2.0, gt=0.0, le=100.0)


class ScaleLr(_Params):
    factor: float = Field(gt=0.0, le=100.0)


class Rollback(_Params):
    to_step: int = Field(ge=0)


class SetMaxLength(_Params):
    tokens: int = Field(ge=1, le=10_000_000)


class Stop(_Params):
    reason: str = Field(default="stopped", max_length=2000)


PARAMS_BY_KIND: dict[str, type[_Params]] = {
    "skip_step": SkipStep,
    "switch_algorithm": SwitchAlgorithm,
    "positive_emphasis": PositiveEmphasis,
    "scale_lr": ScaleLr,
    "rollback": Rollback,
    "set_max_length": SetMaxLength,
    "stop": Stop,
}


def validate_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Normalised params for `kind`, or a 422 naming the offending `params.<field>`."""
    model = PARAMS_BY_KIND[kind]
    try:
        return model.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        fields = ["params." + ".".join(str(p) for p in e["loc"]) for e in errors]
        raise ValidationFailed(
            f"{fields[0]}: {errors[0]['msg']} (for {kind})", fields=fields
        ) from None
