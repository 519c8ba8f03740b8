"""The client endpoints on a real database (PostgreSQL and SQLite) and Redis; no worker."""

from __future__ import annotations

import io
import re
import uuid

from flask import Flask
from flask.testing import FlaskClient

from api.services import EXTENSION_KEY
from shared.models import JobStatus
from shared.params import DEFAULT_OPTIMIZER, DEFAULT_STYLE_WEIGHT
from shared.settings import Settings
from shared.storage import CONTENT_FILE, LocalStorage, style_file

JOB_KEYS = {
    "id",
    "status",
    "params",
    "progress",
    "attempts",
    "cached",
    "shared",
    "worker",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "deadline_at",
    "queue_seconds",
    "run_seconds",
    "urls",
    "warnings",
    "memory",
    "priority",
    "queue",
}


def test_submit_returns_202_with_the_job_and_stores_it(submit, settings: Settings, image_bytes):
    response = submit(
        styles=[image_bytes("starry_night"), image_bytes("shipwreck")],
        params={"size": 32, "iterations": 3, "scales": 1, "style_blend": [2, 1]},
    )
    assert response.status_code == 202, response.json
    job = response.json
    assert set(job) == JOB_KEYS
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["params"]["size"] == 32
    assert job["params"]["style_blend"] == [2.0, 1.0]
    # Every default filled in.
    assert job["params"]["optimizer"] == DEFAULT_OPTIMIZER
    assert job["params"]["style_weight"] == DEFAULT_STYLE_WEIGHT
    assert job["progress"] == {"iteration": 0, "iterations": 3, "percent": 0.0, "eta_seconds": None}
    assert job["attempts"] == 0 and job["worker"] is None and job["error"] is None
    assert job["started_at"] is None and job["run_seconds"] is None
    assert job["urls"] == {
        "self": f"/v1/jobs/{job['id']}",
        "result": f"/v1/jobs/{job['id']}/result",
        "preview": f"/v1/jobs/{job['id']}/preview",
        "cancel": f"/v1/jobs/{job['id']}/cancel",
    }
    storage = LocalStorage(settings.data_dir)
    job_id = uuid.UUID(job["id"])
    assert storage.get(job_id, CONTENT_FILE) == image_bytes("tubingen")
    assert storage.get(job_id, style_file(1)) == image_bytes("shipwreck")


def test_get_job_returns_what_submit_returned(submit, http: FlaskClient, auth):
    created = submit().json
    response = http.get(created["urls"]["self"], headers=auth)
    assert response.status_code == 200
    got = response.json
    assert got["id"] == created["id"] and got["params"] == created["params"]
    assert got["created_at"] == created["created_at"]


def test_submit_enqueues_the_job_id_in_redis(submit, app: Flask, settings: Settings):
    job_id = submit().json["id"]
    redis = app.extensions[EXTENSION_KEY].redis
    queue = f"{settings.redis_prefix}stylequeue.jobs"
    messages = redis.lrange(queue, 0, -1)
    assert any(job_id.encode() in m for m in messages), "the job id should be on the jobs queue"


def test_list_is_newest_first_with_cursor_pagination(submit, http: FlaskClient, auth):
    ids = [submit().json["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = http.get(f"/v1/jobs{query}", headers=auth).json
        pages += 1
        seen += [j["id"] for j in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3


def test_list_filters_by_status(submit, http: FlaskClient, auth):
    keep = submit().json["id"]
    cancel = submit().json["id"]
    assert http.post(f"/v1/jobs/{cancel}/cancel", headers=auth).json["status"] == "canceled"
    queued = http.get("/v1/jobs?status=queued", headers=auth).json["jobs"]
    canceled = http.get("/v1/jobs?status=canceled", headers=auth).json["jobs"]
    assert [j["id"] for j in queued] == [keep]
    assert [j["id"] for j in canceled] == [cancel]


def test_idempotency_key_returns_the_original_job_and_creates_nothing(
    submit, http: FlaskClient, auth, counts
):
    first = submit(headers={"Idempotency-Key": "order-42"})
    before = counts()
    again = submit(headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    jobs, events, dirs, messages = before
    # No row, event or file; the queued job's id is sent to the workers once more on
    # purpose (the API may have died between the commit and the first send).
    assert counts() == (jobs, events, dirs, messages + 1)
    other = submit(headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 202 and other.json["id"] != first.json["id"]
    assert len(http.get("/v1/jobs", headers=auth).json["jobs"]) == 2


def test_idempotency_keys_are_per_client(submit, http: FlaskClient, make_api_key, image_bytes):
    mine = submit(headers={"Idempotency-Key": "shared-key"}).json["id"]
    other_auth = {
        "Authorization": f"Bearer {make_api_key('other')}",
        "Idempotency-Key": "shared-key",
    }
    theirs = http.post(
        "/v1/jobs",
        data={
            "content": (_file(image_bytes("chelsea")), "c.png"),
            "style": (_file(image_bytes("shipwreck")), "s.png"),
            "params": '{"size": 32}',
        },
        headers=other_auth,
    )
    assert theirs.status_code == 202
    assert theirs.json["id"] != mine


def test_two_clients_cannot_see_each_other_s_jobs(submit, http: FlaskClient, make_api_key):
    job = submit().json
    stranger = {"Authorization": f"Bearer {make_api_key('stranger')}"}
    for method, path in [
        ("get", job["urls"]["self"]),
        ("get", job["urls"]["result"]),
        ("get", job["urls"]["preview"]),
        ("post", job["urls"]["cancel"]),
    ]:
        response = getattr(http, method)(path, headers=stranger)
        assert response.status_code == 404, path
        assert response.json["error"]["code"] == "job_not_found"
    assert http.get("/v1/jobs", headers=stranger).json == {"jobs": [], "next_cursor": None}


def test_cancel_of_a_queued_job_is_immediate_and_idempotent(submit, http: FlaskClient, auth):
    job = submit().json
    first = http.post(job["urls"]["cancel"], headers=auth)
    again = http.post(job["urls"]["cancel"], headers=auth)
    assert first.status_code == again.status_code == 200
    assert first.json["status"] == again.json["status"] == "canceled"
    assert first.json["finished_at"] is not None
    assert first.json["finished_at"] == again.json["finished_at"]


def test_result_of_an_unfinished_job_is_409_with_its_status(submit, http: FlaskClient, auth):
    job = submit().json
    response = http.get(job["urls"]["result"], headers=auth)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "job_not_succeeded"
    assert response.json["error"]["details"] == {"status": "queued"}


def test_preview_before_any_is_404_no_preview(submit, http: FlaskClient, auth):
    job = submit().json
    response = http.get(job["urls"]["preview"], headers=auth)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "no_preview"


def test_job_status_values_are_the_enum(submit, http: FlaskClient, auth):
    job = submit().json
    assert JobStatus(job["status"]) is JobStatus.QUEUED


def test_health_and_readiness(http: FlaskClient):
    assert http.get("/healthz").json == {"status": "ok", "checks": {}}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readiness_is_503_naming_redis_when_redis_is_down(settings: Settings):
    from dataclasses import replace

    from api import create_app

    broken = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0"))
    response = broken.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["error"]["code"] == "service_unavailable"
    assert response.json["error"]["details"] == {"database": "ok", "redis": "unavailable"}
    broken.extensions[EXTENSION_KEY].db.dispose()


def test_submit_still_202_when_redis_is_down_and_the_job_stays_queued(
    settings: Settings, make_api_key, image_bytes
):
    # Rule: the job is committed before the enqueue; a failed enqueue leaves it
    # queued for the reconciler, and the client still gets its 202.
    from dataclasses import replace

    from api import create_app

    broken = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0"))
    headers = {"Authorization": f"Bearer {make_api_key()}"}
    response = broken.test_client().post(
        "/v1/jobs",
        data={
            "content": (_file(image_bytes("tubingen")), "c.png"),
            "style": (_file(image_bytes("starry_night")), "s.png"),
        },
        headers=headers,
    )
    assert response.status_code == 202
    got = broken.test_client().get(response.headers["Location"], headers=headers)
    assert got.json["status"] == "queued"
    broken.extensions[EXTENSION_KEY].db.dispose()


def test_openapi_spec_and_docs_page(http: FlaskClient):
    spec = http.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    assert {"StyleParams", "JobOut", "ErrorResponse"} <= set(spec["components"]["schemas"])
    assert "/v1/jobs/{job_id}/result" in spec["paths"]
    # The same schema that validates: the size limits come from StyleParams.
    size = spec["components"]["schemas"]["StyleParams"]["properties"]["size"]
    assert size["minimum"] == 16 and size["maximum"] == 2048
    page = http.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/v1/jobs/{job_id}/cancel" in html and "StyleParams" in html
    # Nothing fetched from another site at run time: every script is the API's own.
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all(re.search(r'src="/docs/static/[\w.-]+\.js"', s) for s in scripts)


def _file(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_the_admin_key_from_the_environment_authenticates_as_an_admin_client(
    settings: Settings, image_bytes
):
    from dataclasses import replace

    from api import create_app
    from shared.auth import authenticate

    admin_app = create_app(replace(settings, admin_key="sq_admin-from-env"))
    headers = {"Authorization": "Bearer sq_admin-from-env"}
    listed = admin_app.test_client().get("/v1/jobs", headers=headers)
    assert listed.status_code == 200
    db = admin_app.extensions[EXTENSION_KEY].db
    with db.session() as session:
        principal = authenticate(session, "sq_admin-from-env")  # now a stored (hashed) client
    assert principal.is_admin and principal.name == "admin"
    wrong = admin_app.test_client().get("/v1/jobs", headers={"Authorization": "Bearer sq_admin"})
    assert wrong.status_code == 401
    db.dispose()


def test_with_the_database_down_readiness_and_requests_are_503(settings: Settings):
    from dataclasses import replace

    from api import create_app

    broken = create_app(replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none"))
    client = broken.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["error"]["details"] == {"database": "unavailable", "redis": "ok"}
    response = client.get("/v1/jobs", headers={"Authorization": "Bearer sq_whatever"})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "service_unavailable"
    broken.extensions[EXTENSION_KEY].db.dispose()
