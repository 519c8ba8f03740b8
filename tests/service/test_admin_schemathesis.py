"""Property-based, as test_api_schemathesis.py but for the admin operations with an admin key:
no generated request may get a 5xx, and every response must match the spec."""

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

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_admin_operations_never_fail_and_match_the_spec(
    app: Flask, make_api_key: Callable[..., str]
) -> None:
    headers = {"Authorization": f"Bearer {make_api_key('fuzz-admin', is_admin=True)}"}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/v1/admin/"):
            continue
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)

        check()
    assert "GET /v1/admin/jobs" in labels and len(labels) == 7
