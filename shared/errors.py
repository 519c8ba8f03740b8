"""The exceptions of stylequeue, all under one root.

    StylequeueError                 root: every error the project raises on purpose
    ├── ConfigError                 a setting from the environment is missing or malformed
    ├── ClientError                 the caller's fault; becomes a 4xx JSON error
    │   ├── ParameterError          400: a job parameter is unknown, mistyped or out of range
    │   ├── InvalidInputError       400: a request part is missing or does not decode
    │   ├── UnauthorizedError       401: no valid API key
    │   ├── ForbiddenError          403: the key lacks the right (admin endpoints)
    │   ├── NotFoundError           404: no such resource for this caller
    │   ├── ConflictError           409: the resource is not in a state that allows this
    │   └── PayloadTooLargeError    413: an upload or the request is over a size limit
    ├── ServiceUnavailableError     503: the database or Redis cannot be reached right now
    └── EngineError                 the style-transfer engine could not finish (worker side)

The HTTP layer turns every ClientError and ServiceUnavailableError into the
JSON error shape in one handler; anything else is a 500 and a bug.
"""

from __future__ import annotations

from typing import Any


class StylequeueError(Exception):
    """Raised for any error that stylequeue raises on purpose; the root of the tree."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON error shape (without the outer ``error`` key)."""
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigError(StylequeueError):
    """Raised when an environment setting is missing or malformed; the message names it."""

    code = "config_error"


class ClientError(StylequeueError):
    """Raised when a request is wrong; the caller can fix it. Always a 4xx."""

    code = "bad_request"
    http_status = 400


class ParameterError(ClientError):
    """Raised when a job parameter is unknown, of the wrong type or out of range."""

    code = "invalid_parameter"
    http_status = 400

    def __init__(self, field: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {message}", details={"field": field, **(details or {})})
        self.field = field


class InvalidInputError(ClientError):
    """Raised when a request part is missing, or an uploaded file does not decode."""

    code = "invalid_input"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        extra = {"field": field} if field is not None else {}
        super().__init__(message, code=code, details={**extra, **(details or {})})
        self.field = field


class UnauthorizedError(ClientError):
    """Raised when the request carries no API key, or one that is not known."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(ClientError):
    """Raised when a valid key asks for something it may not do (admin endpoints)."""

    code = "forbidden"
    http_status = 403


class NotFoundError(ClientError):
    """Raised when a resource does not exist, or belongs to another client."""

    code = "not_found"
    http_status = 404


class ConflictError(ClientError):
    """Raised when a resource is not in a state that allows the request."""

    code = "conflict"
    http_status = 409


class PayloadTooLargeError(ClientError):
    """Raised when an upload or the whole request is over its size limit."""

    code = "payload_too_large"
    http_status = 413


class ServiceUnavailableError(StylequeueError):
    """Raised when the database or Redis cannot be reached right now; retry later."""

    code = "service_unavailable"
    http_status = 503


class EngineError(StylequeueError):
    """Raised when the style-transfer engine cannot run or finish a transfer.

    ``code`` is what a job's ``error.code`` shows the client.
    """

    code = "engine_error"


class LeaseLostError(StylequeueError):
    """Raised when a worker's claim on a job has expired or was taken over by another worker.

    The worker must stop working on the job at once and write nothing more.
    """

    code = "lease_lost"
