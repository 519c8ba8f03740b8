"""Fixtures for the /admin page and /metrics tests: submitting jobs, an admin key."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from admin_ui_helpers import TINY_PARAMS, Submit
from flask.testing import FlaskClient


@pytest.fixture
def submit(http: FlaskClient, image_bytes: Callable[[str], bytes]) -> Submit:
    """POST /v1/jobs as ``key`` (tubingen + starry_night); returns the new job's id."""

    seeds = itertools.count(1)

    def post(key: str, params: dict[str, Any] | None = None) -> str:
        # A seed of its own unless told: no two are identical jobs (which share one run).
        chosen = params or {**TINY_PARAMS, "seed": next(seeds)}
        response = http.post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
                "style": [(io.BytesIO(image_bytes("starry_night")), "style.png")],
                "params": json.dumps(chosen),
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
