"""The submit's ``priority`` form field: an integer from -10 to 10, stored with the job;
anything else is a 400 naming the field, which stores and sends nothing."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.services import EXTENSION_KEY
from shared.models import Job

TINY_PARAMS = {"size": 32, "iterations": 2, "scales": 1}


def post(
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    priority: list[str] | None,
) -> TestResponse:
    data: dict[str, object] = {
        "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
        "style": [(io.BytesIO(image_bytes("starry_night")), "style.png")],
        "params": json.dumps(TINY_PARAMS),
        "cache": "false",
    }
    if priority is not None:
        data["priority"] = priority
    return http.post("/v1/jobs", data=data, headers=auth, content_type="multipart/form-data")


def stored_priority(app: Flask, job_id: str) -> int:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.priority


@pytest.mark.parametrize(("sent", "kept"), [(None, 0), (["10"], 10), ([" -10 "], -10), (["3"], 3)])
def test_a_priority_in_range_is_stored(
    app: Flask,
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    sent: list[str] | None,
    kept: int,
) -> None:
    answer = post(http, auth, image_bytes, sent)
    assert answer.status_code == 202, answer.json
    assert stored_priority(app, answer.json["id"]) == kept


@pytest.mark.parametrize("sent", [["11"], ["-11"], ["1.5"], ["high"], [""], ["1", "2"]])
def test_a_bad_priority_is_a_400_naming_it_and_stores_nothing(
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    counts: Callable[[], tuple[int, int, int, int]],
    sent: list[str],
) -> None:
    before = counts()
    answer = post(http, auth, image_bytes, sent)
    assert answer.status_code == 400
    error = answer.json["error"]
    assert error["code"] == "invalid_priority"
    assert error["details"]["field"] == "priority"
    assert "priority" in error["message"]
    assert counts() == before
