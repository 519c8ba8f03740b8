"""End to end with a real Celery worker process, PostgreSQL and Redis: submit → poll → result."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from api.services import EXTENSION_KEY
from shared import submissions
from shared.auth import authenticate, create_client
from shared.celery_app import enqueue_job
from shared.params import parse_params

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.1
JOB_TIMEOUT_SECONDS = 120.0


@pytest.fixture
def stack_http(worker_stack: Any) -> FlaskClient:
    client: FlaskClient = worker_stack.app.test_client()
    return client


@pytest.fixture
def stack_auth(worker_stack: Any) -> dict[str, str]:
    with worker_stack.app.extensions[EXTENSION_KEY].db.session() as session:
        _, key = create_client(session, "e2e")
    return {"Authorization": f"Bearer {key}"}


def _submit(
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    params: dict[str, Any],
) -> dict[str, Any]:
    response = http.post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
            "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
            "params": json.dumps(params),
        },
        headers=auth,
    )
    assert response.status_code == 202, response.json
    job: dict[str, Any] = response.json
    return job


def _poll_until(
    http: FlaskClient, auth: dict[str, str], job_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", headers=auth).json
        if done(job):
            return job
        time.sleep(POLL_SECONDS)
    pytest.fail(f"job {job_id} did not get there in {JOB_TIMEOUT_SECONDS}s: {job}")


def test_submit_poll_succeeded_and_the_result_is_a_png_of_the_requested_size(
    stack_http: FlaskClient, stack_auth: dict[str, str], image_bytes: Callable[[str], bytes]
) -> None:
    job = _submit(stack_http, stack_auth, image_bytes, {"size": 32, "iterations": 4, "scales": 1})
    done = _poll_until(
        stack_http, stack_auth, job["id"], lambda j: j["status"] not in ("queued", "running")
    )
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["progress"]["iteration"] == 4 and done["progress"]["percent"] == 100.0
    assert done["started_at"] and done["finished_at"] and done["run_seconds"] > 0
    assert done["worker"]
    result = stack_http.get(done["urls"]["result"], headers=stack_auth)
    assert result.status_code == 200 and result.mimetype == "image/png"
    image = Image.open(io.BytesIO(result.data))
    assert image.format == "PNG"
    assert max(image.size) == 32
    assert image.size == (32, 24)  # tubingen is 64x48: the aspect ratio is kept


def test_cancel_a_running_job_stops_it_and_progress_and_preview_are_visible(
    stack_http: FlaskClient, stack_auth: dict[str, str], image_bytes: Callable[[str], bytes]
) -> None:
    job = _submit(
        stack_http, stack_auth, image_bytes, {"size": 64, "iterations": 5000, "scales": 1}
    )
    running = _poll_until(
        stack_http,
        stack_auth,
        job["id"],
        lambda j: j["status"] == "running" and j["progress"]["iteration"] > 0,
    )
    assert 0 < running["progress"]["percent"] < 100
    assert running["progress"]["iterations"] == 5000
    preview = _poll_until_preview(stack_http, stack_auth, job["id"])
    assert Image.open(io.BytesIO(preview)).format == "PNG"
    canceled_at = time.monotonic()
    response = stack_http.post(job["urls"]["cancel"], headers=stack_auth)
    assert response.status_code == 200
    assert response.json["status"] in ("running", "canceled")
    done = _poll_until(stack_http, stack_auth, job["id"], lambda j: j["status"] != "running")
    assert done["status"] == "canceled", done
    assert time.monotonic() - canceled_at < 15
    assert done["progress"]["iteration"] < 5000
    result = stack_http.get(job["urls"]["result"], headers=stack_auth)
    assert result.status_code == 409
    assert result.json["error"]["details"] == {"status": "canceled"}


def test_a_job_that_cannot_run_fails_with_a_code_and_message_the_client_can_read(
    worker_stack: Any, stack_http: FlaskClient, stack_auth: dict[str, str]
) -> None:
    # The API never accepts a broken image, so store one behind its back, as a
    # corrupted disk would, and enqueue the job the way the API does.
    services = worker_stack.app.extensions[EXTENSION_KEY]
    client_id = _client_id(services, stack_auth)
    with services.db.session() as session:
        job, _ = submissions.create_job(
            session,
            services.storage,
            client_id=client_id,
            params=parse_params({"size": 32, "iterations": 2, "scales": 1}),
            content=b"not an image any more",
            styles=[b"nor this"],
            idempotency_key=None,
            enqueue=lambda job_id: enqueue_job(services.celery, job_id),
        )
    done = _poll_until(
        stack_http, stack_auth, str(job.id), lambda j: j["status"] not in ("queued", "running")
    )
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "invalid_image"
    assert "content" in done["error"]["message"]
    assert done["finished_at"] is not None and done["attempts"] == 1


def _client_id(services: Any, auth: dict[str, str]) -> int:
    key = auth["Authorization"].removeprefix("Bearer ")
    with services.db.session() as session:
        return authenticate(session, key).client_id


def _poll_until_preview(http: FlaskClient, auth: dict[str, str], job_id: str) -> bytes:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        response = http.get(f"/v1/jobs/{job_id}/preview", headers=auth)
        if response.status_code == 200:
            return response.data
        assert response.json["error"]["code"] == "no_preview"
        time.sleep(POLL_SECONDS)
    pytest.fail("no preview appeared")
