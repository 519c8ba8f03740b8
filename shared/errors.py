"""The exceptions of stylequeue, all under one root.

    StylequeueError                 root: every error the project raises on purpose
    ├── ConfigError                 a setting from the environment is missing or malformed
    ├── ClientError                 the caller's fault; becomes a 4xx JSON error
    │   ├── ParameterError          400: a job parameter is unknown, mistyped or out of range
    │   ├── InvalidInputError       400: a request part is missing or does not decode
    │   │   └── UnsupportedImageFormatError  415: an image in a format not accepted (GIF…)
    │   ├── UnauthorizedError       401: no valid API key
    │   ├── ForbiddenError          403: the key lacks the right (admin endpoints)
    │   ├── NotFoundError           404: no such resource for this caller
    │   ├── ConflictError           409: the resource is not in a state that allows this
    │   ├── PayloadTooLargeError    413: an upload or the request is over a size limit
    │   ├── IdempotencyKeyReusedError  422: an Idempotency-Key sent again with another request
    │   └── TooManyRequestsError    429: over a client's limit (submit rate, queued jobs)
    ├── ServiceUnavailableError     503: the database or Redis cannot be reached right now
    │   └── StorageError            503: the data dir cannot store or read job files right now
    │       ├── StorageFullError          storage_full: no space left, or a quota used up
    │       └── StorageUnavailableError   storage_unavailable: missing, read-only, refused, failing
    └── EngineError                 the style-transfer engine could not finish (worker side)

The HTTP layer turns every ClientError and ServiceUnavailableError into the
JSON error shape in one handler (a ServiceUnavailableError is a 503 with a
``Retry-After`` of its ``retry_after`` seconds); anything else is a 500 and a
bug. A worker that meets a StorageError leaves its job to be retried, not failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.client_limits import SubmitQuota


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


class UnsupportedImageFormatError(InvalidInputError):
    """Raised when an upload is an image, but in a format that is not accepted (not JPEG,
    PNG or WebP); ``details`` name the format found and the accepted ones."""

    code = "unsupported_image_format"
    http_status = 415


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


class IdempotencyKeyReusedError(ClientError):
    """Raised when an Idempotency-Key comes again with different inputs or parameters.

    The key names a job already made from another request: replaying that job
    would answer a request that was not the one sent.
    """

    code = "idempotency_key_reused"
    http_status = 422


class TooManyRequestsError(ClientError):
    """Raised when a submit is over its client's limit; nothing is stored.

    ``code`` names the limit (``rate_limited``, ``too_many_queued``);
    ``retry_after`` is the seconds to wait (the ``Retry-After`` header);
    ``quota`` is where the client stands, for the rate-limit headers.
    """

    code = "too_many_requests"
    http_status = 429

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: int,
        quota: SubmitQuota,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            message, code=code, details={**(details or {}), "retry_after": retry_after}
        )
        self.retry_after = retry_after
        self.quota = quota


class ServiceUnavailableError(StylequeueError):
    """Raised when the database or Redis cannot be reached right now; retry later."""

    code = "service_unavailable"
    http_status = 503
    retry_after: int = 5  # seconds: the Retry-After header of the 503


class StorageError(ServiceUnavailableError):
    """Raised when a job file cannot be written or read because of the storage itself.

    Not the caller's fault and not a bug: the same request succeeds once the
    operator has made room or brought the data dir back. ``details`` carry the
    ``errno`` name (e.g. ``ENOSPC``). A missing job file is a NotFoundError, not this.
    """

    code = "storage_unavailable"
    retry_after = 30  # a full or broken disk takes an operator, not a blip


class StorageFullError(StorageError):
    """Raised when the data dir has no space left, or its quota is used up (ENOSPC, EDQUOT)."""

    code = "storage_full"


class StorageUnavailableError(StorageError):
    """Raised when the data dir is missing, read-only, refuses access or fails (EIO)."""

    code = "storage_unavailable"


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
