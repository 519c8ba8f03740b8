"""The one error handler: every error leaves the API in the one JSON error shape."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from api.limits import quota_headers
from shared.errors import (
    ClientError,
    ServiceUnavailableError,
    StorageError,
    StylequeueError,
    TooManyRequestsError,
)

log = logging.getLogger(__name__)

# Werkzeug's own errors (routing, body size) get these codes instead of their class names.
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "route_not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, handle_error)


def error_response(status: int, code: str, message: str, details: dict | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def handle_error(exc: Exception) -> Response:
    """Turn any exception into a JSON error; only a bug becomes a 500."""
    if isinstance(exc, StorageError):
        # The operator's business (a full or broken disk), not the caller's: say it in the log.
        log.warning("%s [%s]", exc.message, exc.__cause__ or exc.code)
    if isinstance(exc, ClientError | ServiceUnavailableError):
        return _from_stylequeue_error(exc)
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    if isinstance(exc, OperationalError):
        log.warning("database unavailable: %s", exc)
        return _from_stylequeue_error(ServiceUnavailableError("the database cannot be reached"))
    log.exception("unhandled error")
    return error_response(500, StylequeueError.code, "internal error; it has been logged")


def _from_stylequeue_error(exc: StylequeueError) -> Response:
    response = jsonify({"error": exc.to_dict()})
    response.status_code = exc.http_status
    if isinstance(exc, ServiceUnavailableError):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, TooManyRequestsError):
        response.headers["Retry-After"] = str(exc.retry_after)
        response.headers.update(quota_headers(exc.quota))
    return response


def _from_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_ERROR_CODES.get(status) or _snake(exc.__class__.__name__)
    response = error_response(status, code, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":  # e.g. Allow on a 405
            response.headers[name] = value
    return response


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
