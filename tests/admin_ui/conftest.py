"""Helpers for the /admin page and /metrics tests: submitting jobs and logging in."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

TINY_PARAMS = {"size": 32, "iterations": 2, "scales": 1}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')

Submit = Callable[..., str]


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(http: FlaskClient, key: str) -> str:
    """Log the test client in with ``key``; returns the session's CSRF token."""
    page = http.get("/admin/login")
    assert page.status_code == 200
    response = http.post(
        "/admin/login", data={"key": key, "csrf_token": csrf_of(page.text), "next": "/admin"}
    )
    assert response.status_code == 303, response.text
    return csrf_of(http.get("/admin").text)


@pytest.fixture
def submit(http: FlaskClient, image_bytes: Callable[[str], bytes]) -> Submit:
    """POST /v1/jobs as ``key`` (tubingen + starry_night); returns the new job's id."""

    def post(key: str, params: dict[str, Any] | None = None) -> str:
        response = http.post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
                "style": [(io.BytesIO(image_bytes("starry_night")), "style.png")],
                "params": json.dumps(params or TINY_PARAMS),
            },
            headers={"Authorization": f"Bearer {key}"},
            content_type="multipart/form-data",
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json["id"]
        return job_id

    return post


@pytest.fixture
def admin_key(make_api_key: Callable[..., str]) -> str:
    return make_api_key("ops", is_admin=True)
