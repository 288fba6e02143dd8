"""What the sync and async clients share: request specs, encoding, error mapping, backoff.

Each public method of a client builds a `Call` (method, path, query, body, whether it may be
retried, how to read the answer); the client only sends it. So the two clients cannot drift
apart on paths, encodings or retry rules.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_jsonable_python

from rlkeel.client._exceptions import (
    APIError,
    RequestTimeoutError,
    TransportError,
    UnexpectedResponseError,
    error_class_for,
)
from rlkeel.client.schemas import StepReport

T = TypeVar("T")
Parser = Callable[[httpx.Response], T]
"""Reads a success answer into the value a client method returns."""

API_PREFIX = "/v1"
USER_AGENT = "rlkeel-client/1"
MAX_BACKOFF_S = 30.0
# httpx errors after which a request may be sent again (idempotent calls only).
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError,)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to make and how to read its answer."""

    method: str
    path: str
    parse: Parser[T]
    params: Mapping[str, Any] | None = None
    body: bytes | None = None
    idempotent: bool = False
    """Safe to send again after a connection error, a timeout or a 5xx."""
    ok_statuses: frozenset[int] = field(default_factory=frozenset)
    """Error statuses the caller reads as an answer rather than an exception."""
    timeout: float | None = None
    """Seconds for this request, instead of the client's timeout."""


def segment(value: str | int) -> str:
    """A path segment, percent-encoded (run ids are opaque strings)."""
    return quote(str(value), safe="")


def encode(payload: BaseModel | Mapping[str, Any]) -> bytes:
    """JSON body. Models dump in JSON mode, so a NaN metric travels as the string "NaN".

    pydantic's JSON mode turns a non-finite float inside a free dict (a sample's `extra`) into
    null; those dicts are put back as given, so their NaN/±inf go out as the bare tokens
    NaN/Infinity, which the service's parser accepts and stores as non-finite numbers.
    """
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    if isinstance(payload, StepReport):
        for wire, sample in zip(data["samples"], payload.samples, strict=True):
            if sample.extra and _has_nonfinite(sample.extra):
                wire["extra"] = to_jsonable_python(sample.extra, inf_nan_mode="constants")
    return json.dumps(data, separators=(",", ":")).encode()


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(v) for v in value)
    return False


def params_of(**values: Any) -> dict[str, Any]:
    """Query parameters without the ones left at None; enums as their values."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out[name] = [getattr(v, "value", v) for v in value]
        else:
            out[name] = getattr(value, "value", value)
    return out


def model_parser(schema: Any) -> Parser[Any]:
    """A parser that validates the JSON answer into `schema` (a model or a type like list[X])."""
    adapter: TypeAdapter[Any] = TypeAdapter(schema)

    def parse(response: httpx.Response) -> Any:
        try:
            return adapter.validate_json(response.content)
        except PydanticValidationError as exc:
            raise UnexpectedResponseError(
                f"{response.request.method} {response.request.url}: the answer does not match "
                f"the wire schema {getattr(schema, '__name__', schema)!s}: {exc}"
            ) from None

    return parse


def json_parser(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponseError(
            f"{response.request.method} {response.request.url}: the answer is not JSON"
        ) from None


def api_error(response: httpx.Response, *, attempts: int = 1) -> APIError:
    """The exception for an error answer, from its envelope when it has one."""
    status = response.status_code
    error = response.reason_phrase or f"HTTP {status}"
    detail = ""
    fields: Sequence[str] = ()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error = str(body.get("error") or error)
        detail = str(body.get("detail") or "")
        raw_fields = body.get("fields") or []
        fields = [str(f) for f in raw_fields] if isinstance(raw_fields, list) else []
    elif isinstance(body, dict) and "detail" in body:
        detail = str(body["detail"])
    else:
        detail = response.text[:200].strip() or error
    request = response.request
    return error_class_for(status)(
        status, error, detail, fields, method=request.method, url=str(request.url),
        attempts=attempts,
    )  # fmt: skip


def transport_error(exc: Exception, request: httpx.Request, *, attempts: int) -> TransportError:
    cls = RequestTimeoutError if isinstance(exc, httpx.TimeoutException) else TransportError
    what = str(exc) or type(exc).__name__
    return cls(
        f"{request.method} {request.url}: {type(exc).__name__}: {what} "
        f"(after {attempts} attempt{'s' if attempts != 1 else ''})",
        method=request.method, url=str(request.url), attempts=attempts,
    )  # fmt: skip


def should_retry_status(status: int) -> bool:
    return status >= 500


def backoff_delay(attempt: int, base: float, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, with jitter.

    Equal jitter: half the exponential delay, plus a uniform draw over the other half, so
    clients that failed together do not come back together. A `Retry-After` in seconds from the
    service raises the delay (capped at `MAX_BACKOFF_S`).
    """
    delay = min(MAX_BACKOFF_S, base * 2.0**attempt)
    delay = delay / 2 + random.uniform(0, delay / 2)
    if response is not None:
        retry_after = response.headers.get("retry-after", "")
        if retry_after.isdigit():
            delay = max(delay, min(MAX_BACKOFF_S, float(retry_after)))
    return delay


def check_options(timeout: float, retries: int, backoff: float) -> None:
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if backoff < 0:
        raise ValueError(f"backoff must be >= 0, got {backoff}")


def base_headers(token: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(extra or {})
    # httpx masks the Authorization header in reprs; the client keeps no other copy.
    headers["Authorization"] = f"Bearer {token}"
    return headers


JSON_HEADERS = {"Content-Type": "application/json"}
