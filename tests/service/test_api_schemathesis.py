"""Property-based: schemathesis generates requests from /openapi.json; none may get a 5xx,
and every response must match the spec (status code, content type, body schema).

Bounded to a few examples per operation so the suite stays quick. (schemathesis'
pytest fixture integration does not run under pytest 9, so the operations are
driven through its Python API and hypothesis directly.)
"""

from __future__ import annotations

from collections.abc import Callable

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 15
ADMIN_EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _fuzz(app: Flask, headers: dict[str, str], *, prefix: str = "/", examples: int) -> list[str]:
    """Run every operation whose path starts with ``prefix``; returns their labels."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(prefix):
            continue
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)

        check()
    return labels


def test_no_server_errors_and_responses_match_the_spec(app: Flask, auth: dict[str, str]) -> None:
    labels = _fuzz(app, auth, examples=EXAMPLES_PER_OPERATION)
    assert "POST /v1/jobs" in labels and len(labels) >= 8


def test_admin_operations_never_fail_and_match_the_spec(
    app: Flask, make_api_key: Callable[..., str]
) -> None:
    """The admin operations again with an admin key (above, a client key gets them 403)."""
    headers = {"Authorization": f"Bearer {make_api_key('fuzz-admin', is_admin=True)}"}
    labels = _fuzz(app, headers, prefix="/v1/admin/", examples=ADMIN_EXAMPLES_PER_OPERATION)
    assert "GET /v1/admin/jobs" in labels and len(labels) == 7
