"""OpenAPI additions: schemas of bodies that routes parse themselves (the hot ingest path), and
the error envelope on every operation, with the status codes each one can answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from rlkeel.client.schemas import ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_ERROR_TEXT = {
    401: "Missing, malformed, invalid or revoked token",
    403: "The token's role may not do this",
    404: "No such object",
    409: "Conflict with the object's current state",
    413: "Request body larger than the limit",
    422: "Invalid input; `fields` names the offending ones",
    503: "The database is unavailable; retry later",
}
_METHODS = ("get", "put", "post", "delete", "patch")


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)


def _error_codes(path: str, method: str, op: dict[str, Any]) -> list[int]:
    codes = [422]
    if op.get("security"):
        codes += [401, 403, 503]
    if "{" in path:
        codes.append(404)
    if method in ("post", "put", "patch", "delete"):
        codes += [409, 413]
    return sorted(codes)


def document_errors(spec: dict[str, Any]) -> None:
    """Every error an operation can answer, as the one envelope (FastAPI's own 422 schema is
    never used: validation errors are rendered as `ErrorBody` too)."""
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            for code in _error_codes(path, method, op):
                responses[str(code)] = {
                    "description": _ERROR_TEXT[code],
                    "content": {"application/json": {"schema": _ERROR_REF}},
                }
    schemas = spec.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def install_openapi(app: FastAPI, extra_models: list[type[BaseModel]]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)  # fmt: skip
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in [*extra_models, ErrorBody]:
            _add_schema(schemas, model)
        document_errors(spec)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
