"""One error base class, rendered as one JSON envelope (DESIGN §3)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rlkeel.server")


class RlkeelError(Exception):
    status_code = 500
    error = "InternalError"

    def __init__(self, detail: str, *, fields: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = list(fields)


class BadRequest(RlkeelError):
    status_code = 400
    error = "BadRequest"


class Unauthorized(RlkeelError):
    status_code = 401
    error = "Unauthorized"


class Forbidden(RlkeelError):
    status_code = 403
    error = "Forbidden"


class NotFound(RlkeelError):
    status_code = 404
    error = "NotFound"


class Conflict(RlkeelError):
    status_code = 409
    error = "Conflict"


class PayloadTooLarge(RlkeelError):
    status_code = 413
    error = "PayloadTooLarge"


class ValidationFailed(RlkeelError):
    status_code = 422
    error = "ValidationError"


class ServiceUnavailable(RlkeelError):
    status_code = 503
    error = "ServiceUnavailable"


def envelope(status: int, error: str, detail: str, fields: Sequence[str] = ()) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": error, "detail": detail, "fields": list(fields)}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


_STATUS_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                 405: "MethodNotAllowed", 409: "Conflict", 413: "PayloadTooLarge",
                 415: "UnsupportedMediaType", 422: "ValidationError", 429: "TooManyRequests",
                 503: "ServiceUnavailable"}  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RlkeelError)
    async def _rlkeel(_: Request, exc: RlkeelError) -> JSONResponse:
        return envelope(exc.status_code, exc.error, exc.detail, exc.fields)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # A body that is not JSON at all is about the body, not position N within it.
        fields = ["body" if e.get("type") == "json_invalid" else _field_path(e.get("loc", ()))
                  for e in errors]  # fmt: skip
        first = errors[0] if errors else {}
        where = fields[0] if fields else "body"
        detail = f"{where}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return envelope(422, "ValidationError", detail, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400 is a body it cannot parse: a payload error like any other, so
            # the same 422 the hand-parsed ingest path answers.
            return envelope(422, "ValidationError", f"body: {exc.detail}", ["body"])
        name = _STATUS_NAMES.get(exc.status_code, "HTTPError")
        fields = ["body"] if exc.status_code in (413, 422) else []
        return envelope(exc.status_code, name, str(exc.detail), fields)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeoutError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        _count_db_error(app)
        return envelope(503, "ServiceUnavailable", "the database is unavailable; retry later")

    @app.exception_handler(DataError)
    async def _bad_data(_: Request, exc: DataError) -> JSONResponse:
        # SQLSTATE class 22 (data exception): a value the database cannot hold (an integer out
        # of range, a NUL byte, bad text). The input's fault, so 422, never a 500; the checks
        # in the schemas catch these first, this is the net under them.
        log.warning("database refused a value: %s", type(exc.orig).__name__)
        return envelope(422, "ValidationError", "a value is out of the range the store accepts")

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        _count_db_error(app)
        if exc.connection_invalidated:
            return envelope(503, "ServiceUnavailable", "the database connection was lost; retry")
        log.exception("database error")
        return envelope(500, "InternalError", "database error")


def _count_db_error(app: FastAPI) -> None:
    hook = getattr(app.state, "on_db_error", None)
    if hook is not None:
        hook()
