"""The API's JSON error shape becomes an exception with status, code, message, details."""

from __future__ import annotations

import pytest

from client import (
    APIError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    StylequeueClientError,
    UnauthorizedError,
)
from client.errors import api_error_from_response


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (429, RateLimitedError),
        (500, ServerError),
        (503, ServerError),
        (418, APIError),
    ],
)
def test_each_status_has_its_class(status: int, cls: type[APIError]) -> None:
    body = {"error": {"code": "some_code", "message": "why", "details": {"field": "size"}}}
    exc = api_error_from_response(status, body)
    assert type(exc) is cls and isinstance(exc, StylequeueClientError)
    assert (exc.status, exc.code, exc.message, exc.details) == (
        status,
        "some_code",
        "why",
        {"field": "size"},
    )
    assert "why" in str(exc) and "some_code" in str(exc) and str(status) in str(exc)


def test_details_may_be_absent() -> None:
    exc = api_error_from_response(404, {"error": {"code": "not_found", "message": "no job x"}})
    assert exc.details == {} and exc.message == "no job x"


@pytest.mark.parametrize(
    "body", [None, "<html>Bad Gateway</html>", {"detail": "x"}, {"error": "x"}]
)
def test_a_body_without_the_error_shape_still_gets_a_code(body: object) -> None:
    exc = api_error_from_response(502, body)
    assert isinstance(exc, ServerError)
    assert exc.code == "http_502" and "502" in exc.message
