"""Plain helpers for the /admin tests (a module of its own: ``from conftest import``
would depend on which directory's conftest pytest imported last)."""

from __future__ import annotations

import re
from collections.abc import Callable

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
