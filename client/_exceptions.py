"""Every exception the rlkeel client raises, in one tree.

::

    RlkeelError                      base of everything below
    ├── APIError                     the service answered with an error status
    │   │                            (.status_code, .error, .detail, .fields, .method, .url)
    │   ├── BadRequestError          400
    │   ├── AuthenticationError      401  no token, or a bad one
    │   ├── PermissionDeniedError    403  the token's role may not do this
    │   ├── NotFoundError            404  unknown run, command, finding
    │   ├── ConflictError            409  e.g. a command that cannot take that status
    │   ├── PayloadTooLargeError     413  body over the service's size limit
    │   ├── UnprocessableEntityError 422  payload validation; .fields names the offenders
    │   └── ServerError              5xx
    │       └── ServiceUnavailableError 503  e.g. the database is down
    ├── TransportError               no answer: connection refused, reset, protocol error,
    │   │                            or any other failure of httpx to complete the request
    │   └── RequestTimeoutError      no answer within the client's timeout
    └── UnexpectedResponseError      a 2xx answer that does not match the wire schema

The fields of an `APIError` come from the service's error envelope (DESIGN §3)
``{"error": "<ErrorClass>", "detail": "<human sentence>", "fields": [...]}``. An error answer
that is not such an envelope (a proxy's HTML page, say) still maps by its status code, with
``error`` set to the HTTP reason phrase. Other 4xx statuses (405, 429, ...) raise `APIError`
itself.

`TransportError` and `RequestTimeoutError` are raised after the client's retries are spent
(idempotent calls only; see `Client`); the httpx exception is chained as ``__cause__``.
`attempts` tells how many requests were made.

Messages never carry the API token. Local validation of arguments (a `StepReport` built from a
dict) raises pydantic's own ``pydantic.ValidationError`` before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "RlkeelError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
]


class RlkeelError(Exception):
    """Base class of every error the client raises."""


class APIError(RlkeelError):
    """The service answered with an error status (4xx or 5xx)."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        fields: Sequence[str] = (),
        *,
        method: str = "",
        url: str = "",
        attempts: int = 1,
    ) -> None:
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.fields = list(fields)
        self.method = method
        self.url = url
        self.attempts = attempts
        message = f"{status_code} {error}: {detail}"
        if self.fields:
            message += f" [fields: {', '.join(self.fields)}]"
        if method:
            message += f" ({method} {url})"
        super().__init__(message)


class BadRequestError(APIError):
    """400: the request is malformed."""


class AuthenticationError(APIError):
    """401: no token, or one the service does not know."""


class PermissionDeniedError(APIError):
    """403: the token's role may not call this endpoint."""


class NotFoundError(APIError):
    """404: the run, command or finding does not exist."""


class ConflictError(APIError):
    """409: the request conflicts with the current state."""


class PayloadTooLargeError(APIError):
    """413: the body is over the service's size limit."""


class UnprocessableEntityError(APIError):
    """422: the payload failed validation; `fields` holds dotted paths like ``samples.3.length``."""


class ServerError(APIError):
    """5xx: the service failed."""


class ServiceUnavailableError(ServerError):
    """503: the service cannot answer now (e.g. its database is down); retry later."""


class TransportError(RlkeelError):
    """No HTTP answer: connection refused or reset, DNS failure, protocol error."""

    def __init__(self, message: str, *, method: str = "", url: str = "", attempts: int = 1) -> None:
        self.method = method
        self.url = url
        self.attempts = attempts
        super().__init__(message)


class RequestTimeoutError(TransportError):
    """No answer within the client's timeout."""


class UnexpectedResponseError(RlkeelError):
    """A success answer whose body is not JSON or does not match the wire schema."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    503: ServiceUnavailableError,
}


def error_class_for(status_code: int) -> type[APIError]:
    """The `APIError` subclass for an HTTP status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    return APIError
