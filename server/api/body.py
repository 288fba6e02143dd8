"""Parse a JSON body straight into a schema, with the same 422 envelope as FastAPI's path."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from rlkeel.server.api.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)


def parse_json_body(model: type[M], raw: bytes) -> M:
    if not raw:
        raise ValidationFailed("body: a JSON body is required", fields=["body"])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        fields = [".".join(str(p) for p in e["loc"]) or "body" for e in errors]
        first = errors[0]
        detail = f"{fields[0]}: {first['msg']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        raise ValidationFailed(detail, fields=fields) from None
