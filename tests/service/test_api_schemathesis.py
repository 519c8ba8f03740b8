"""Property-based: schemathesis generates requests from /openapi.json; none may get a 5xx,
and every response must match the spec (status code, content type, body schema).

Bounded to a few examples per operation so the suite stays quick. (schemathesis'
pytest fixture integration does not run under pytest 9, so the operations are
driven through its Python API and hypothesis directly.)
"""

from __future__ import annotations

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
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_server_errors_and_responses_match_the_spec(app: Flask, auth: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=auth)
            case.validate_response(response, checks=CHECKS)

        check()
    assert "POST /v1/jobs" in labels and len(labels) >= 8
