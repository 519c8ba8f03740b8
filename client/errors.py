"""The exceptions the stylequeue client raises, all under one root.

    StylequeueClientError           root: every error this package raises on purpose
    ├── TransportError              the server could not be reached, or the connection broke
    ├── InvalidResponseError        the server answered, but not with what the API promises
    ├── APIError                    the server answered with an error (status, code, message, details)
    │   ├── BadRequestError         400: a parameter or an upload was rejected
    │   ├── UnauthorizedError       401: no API key, or one the server does not know
    │   ├── ForbiddenError          403: the key may not do this
    │   ├── NotFoundError           404: no such job for this key
    │   ├── ConflictError           409: the job is not in a state that allows this
    │   ├── PayloadTooLargeError    413: an upload is over the server's size limit
    │   ├── RateLimitedError        429: too many requests; retry later
    │   └── ServerError             5xx: the server failed; retry later or report it
    └── WaitTimeoutError            wait() gave up before the job reached a final status

These are deliberately separate from the server's ``shared.errors``: the client
is what a user installs to talk to a server, and it imports nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.models import Job


class StylequeueClientError(Exception):
    """Raised for any error that the client raises on purpose; the root of the tree."""


class TransportError(StylequeueClientError):
    """Raised when the server cannot be reached, or the connection fails mid-request."""


class InvalidResponseError(StylequeueClientError):
    """Raised when a response does not have the shape the API promises (a bug or a proxy)."""


class APIError(StylequeueClientError):
    """Raised when the server answers with an error; carries the API's error fields.

    ``status`` is the HTTP status, ``code`` the API's machine code (for example
    ``invalid_parameter``), ``message`` the text for humans, ``details`` the
    extra fields (for example ``{"field": "size"}``).
    """

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class BadRequestError(APIError):
    """Raised on a 400: a parameter is unknown or out of range, or an upload does not decode."""


class UnauthorizedError(APIError):
    """Raised on a 401: the API key is missing or unknown."""


class ForbiddenError(APIError):
    """Raised on a 403: the API key is valid but may not do this."""


class NotFoundError(APIError):
    """Raised on a 404: no such job, or it belongs to another client."""


class ConflictError(APIError):
    """Raised on a 409: for example the result of a job that has not succeeded."""


class PayloadTooLargeError(APIError):
    """Raised on a 413: an upload or the whole request is over the server's limit."""


class RateLimitedError(APIError):
    """Raised on a 429: the server asks the client to slow down.

    ``retry_after`` is the server's ``Retry-After`` in seconds (None when it sent none);
    ``code`` names the limit (``rate_limited``, ``too_many_queued``).
    """

    retry_after: float | None = None


class ServerError(APIError):
    """Raised on a 5xx: the server or one of its services failed."""


class WaitTimeoutError(StylequeueClientError):
    """Raised when wait() reaches its timeout; ``job`` is the last state seen."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(f"job {job.id} is still {job.status.value} after waiting {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s


_ERROR_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}


def api_error_from_response(status: int, body: Any) -> APIError:
    """The exception for an error response, from its status and decoded JSON body.

    ``body`` is the API's ``{"error": {"code", "message", "details"}}``; anything
    else (a proxy's HTML page, an empty body) still becomes an APIError, with a
    code made from the status so that callers can always branch on ``code``.
    """
    cls = _ERROR_BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        details = error.get("details")
        return cls(
            status,
            error["code"],
            str(error.get("message") or error["code"]),
            details if isinstance(details, Mapping) else None,
        )
    return cls(status, f"http_{status}", f"the server answered HTTP {status}")
