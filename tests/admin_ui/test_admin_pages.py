"""The /admin pages through Flask's test client: login, CSRF, filters, bad input, thumbnails.

On both backends (the ``app`` fixture), with real files in the data dir. The
browser test (test_admin_browser.py) drives the same pages in Chromium.
"""

from __future__ import annotations

import io
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from admin_ui_helpers import Submit, csrf_of, log_in
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api import create_app
from api.admin_ui.auth import SECRET_FILE, SESSION_COOKIE
from api.services import EXTENSION_KEY
from shared.models import Job, JobStatus
from shared.settings import Settings


def _status(app: Flask, job_id: str) -> JobStatus:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.status


def test_every_page_needs_a_login(http: FlaskClient) -> None:
    for path in ("/admin", "/admin/stats", "/admin/workers", f"/admin/jobs/{uuid.uuid4()}"):
        response = http.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=")
    live = http.get(f"/admin/live?id={uuid.uuid4()}")
    assert live.status_code == 401
    assert live.json["error"]["code"] == "login_required"
    thumb = http.get(f"/admin/jobs/{uuid.uuid4()}/thumbs/content")
    assert thumb.status_code == 401
    assert http.post(f"/admin/jobs/{uuid.uuid4()}/cancel").status_code == 401


def test_login_refuses_a_client_key_and_a_wrong_key(
    http: FlaskClient, api_key: str, admin_key: str
) -> None:
    csrf = csrf_of(http.get("/admin/login").text)
    wrong = http.post("/admin/login", data={"key": "sq_nope", "csrf_token": csrf})
    assert wrong.status_code == 401
    assert "the API key is not valid" in wrong.text
    client = http.post("/admin/login", data={"key": api_key, "csrf_token": csrf})
    assert client.status_code == 403
    assert "is not an admin key" in client.text
    assert http.get("/admin").status_code == 302  # still logged out
    no_token = http.post("/admin/login", data={"key": admin_key})
    assert no_token.status_code == 403
    assert "security token" in no_token.text
    assert http.get("/admin").status_code == 302


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(
    http: FlaskClient, admin_key: str
) -> None:
    page = http.get("/admin/login?next=/admin/stats")
    response = http.post(
        "/admin/login",
        data={"key": admin_key, "csrf_token": csrf_of(page.text), "next": "/admin/stats"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/stats"
    cookie = next(
        v for k, v in response.headers.items() if k == "Set-Cookie" and SESSION_COOKIE in v
    )
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert admin_key not in cookie
    html = http.get("/admin/stats").text
    assert "Log out" in html
    assert http.post("/admin/logout", data={"csrf_token": csrf_of(html)}).status_code == 303
    assert http.get("/admin").status_code == 302


def test_login_never_redirects_off_site(http: FlaskClient, admin_key: str) -> None:
    csrf = csrf_of(http.get("/admin/login").text)
    for target in ("https://evil.example/", "//evil.example/admin", "/v1/jobs"):
        response = http.post(
            "/admin/login", data={"key": admin_key, "csrf_token": csrf, "next": target}
        )
        assert response.headers["Location"] == "/admin", target
        http.post("/admin/logout", data={"csrf_token": csrf_of(http.get("/admin").text)})
        csrf = csrf_of(http.get("/admin/login").text)


def test_the_table_shows_every_clients_jobs_and_filters_by_status(
    http: FlaskClient, app: Flask, submit: Submit, make_api_key: Callable[..., str], admin_key: str
) -> None:
    alice, bob = make_api_key("alice"), make_api_key("bob")
    queued = submit(alice)
    canceled = submit(bob)
    csrf = log_in(http, admin_key)
    assert http.post(f"/admin/jobs/{canceled}/cancel", data={"csrf_token": csrf}).status_code == 303
    page = http.get("/admin?limit=100").text
    assert f'data-job="{queued}"' in page and f'data-job="{canceled}"' in page
    only_canceled = http.get("/admin?status=canceled&limit=100").text
    assert f'data-job="{canceled}"' in only_canceled
    assert f'data-job="{queued}"' not in only_canceled
    assert 'data-status="queued"' not in only_canceled.split("<tbody>")[1]
    both = http.get("/admin?status=canceled&status=queued&limit=100").text
    assert f'data-job="{canceled}"' in both and f'data-job="{queued}"' in both
    # A failed job shows its error code in the table.
    with app.extensions[EXTENSION_KEY].db.session() as session:
        job = session.get(Job, uuid.UUID(queued))
        assert job is not None
        job.status, job.error_code, job.error_message = JobStatus.FAILED, "out_of_memory", "OOM"
        job.finished_at = job.created_at
        session.commit()
    failed = http.get("/admin?status=failed&limit=100").text
    row = failed.split(f'data-job="{queued}"')[1].split("</tr>")[0]
    assert "out_of_memory" in row and 'title="OOM"' in row


def test_older_pages_follow_the_cursor(
    http: FlaskClient, submit: Submit, api_key: str, admin_key: str
) -> None:
    ids = [submit(api_key) for _ in range(3)]
    log_in(http, admin_key)
    first = http.get("/admin?limit=2&status=queued").text
    assert f'data-job="{ids[2]}"' in first and f'data-job="{ids[1]}"' in first
    assert 'rel="next"' in first
    older = first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    second = http.get(older).text
    assert f'data-job="{ids[0]}"' in second
    assert f'data-job="{ids[2]}"' not in second


def test_bad_filters_are_a_400_page_naming_them(http: FlaskClient, admin_key: str) -> None:
    log_in(http, admin_key)
    for query, named in (
        ("status=bogus", "status"),
        ("client=abc", "client"),
        ("cursor=xyz", "cursor"),
        ("limit=100000", "limit"),
        ("worker=%00", "worker"),
        ("client=99999999999999999999", "client"),
        ("created_from=2026-01-01", "created_from"),
    ):
        response = http.get(f"/admin?{query}")
        assert response.status_code == 400, query
        assert response.mimetype == "text/html"
        assert named in response.text, query
    assert http.get("/admin/stats?hours=0").status_code == 400
    assert http.get("/admin/jobs/x/thumbs/content?size=7").status_code in (400, 404)


def test_unknown_job_and_page_are_404_pages(http: FlaskClient, admin_key: str) -> None:
    log_in(http, admin_key)
    for path in (f"/admin/jobs/{uuid.uuid4()}", "/admin/jobs/not-a-uuid", "/admin/nothing"):
        response = http.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html"
        assert "404" in response.text
    assert http.get("/admin/").headers["Location"] == "/admin"
    json_404 = http.get(f"/admin/jobs/{uuid.uuid4()}", headers={"Accept": "application/json"})
    assert json_404.status_code == 404
    assert json_404.json["error"]["code"] == "job_not_found"


def test_actions_need_the_csrf_token_and_change_nothing_without_it(
    http: FlaskClient, app: Flask, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    csrf = log_in(http, admin_key)
    for data in ({}, {"csrf_token": "forged"}):
        response = http.post(f"/admin/jobs/{job_id}/cancel", data=data)
        assert response.status_code == 403
        assert "security token" in response.text
    assert _status(app, job_id) is JobStatus.QUEUED
    response = http.post(f"/admin/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 303
    assert _status(app, job_id) is JobStatus.CANCELED


def test_job_page_cancel_retry_and_delete_files(
    http: FlaskClient, app: Flask, settings: Settings, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    csrf = log_in(http, admin_key)
    page = http.get(f"/admin/jobs/{job_id}").text
    assert 'data-role="cancel"' in page and "created" in page
    response = http.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert response.headers["Location"] == f"/admin/jobs/{job_id}"
    page = http.get(f"/admin/jobs/{job_id}").text
    assert "canceled" in page and 'data-role="retry"' in page
    assert http.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": csrf}).status_code == 303
    assert _status(app, job_id) is JobStatus.QUEUED
    # Deleting a queued job's files is refused (409 page), and nothing is removed.
    conflict = http.post(f"/admin/jobs/{job_id}/delete-files", data={"csrf_token": csrf})
    assert conflict.status_code == 409
    assert (settings.data_dir / "jobs" / job_id / "content.png").is_file()
    http.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    deleted = http.post(f"/admin/jobs/{job_id}/delete-files", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert not (settings.data_dir / "jobs" / job_id / "content.png").exists()
    page = http.get(f"/admin/jobs/{job_id}").text
    assert "files_deleted" in page
    # The thumbnail of a deleted file is a placeholder, never an error.
    thumb = http.get(f"/admin/jobs/{job_id}/thumbs/content")
    assert thumb.status_code == 200 and thumb.mimetype == "image/svg+xml"


def test_thumbnails_are_small_jpegs_and_missing_files_placeholders(
    http: FlaskClient, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    log_in(http, admin_key)
    for name, size in (("content", 96), ("style-0", 96), ("content", 320)):
        response = http.get(f"/admin/jobs/{job_id}/thumbs/{name}?size={size}")
        assert response.status_code == 200
        assert response.mimetype == "image/jpeg"
        with Image.open(io.BytesIO(response.data)) as image:
            assert max(image.size) <= size
            assert image.format == "JPEG"
        assert "max-age" in response.headers["Cache-Control"]
    for name in ("result", "preview", "style-3"):
        response = http.get(f"/admin/jobs/{job_id}/thumbs/{name}")
        assert response.status_code == 200
        assert response.mimetype == "image/svg+xml"
        assert response.headers["Cache-Control"] == "no-store"
    assert http.get(f"/admin/jobs/{job_id}/thumbs/../../etc/passwd").status_code == 404
    assert http.get(f"/admin/jobs/{job_id}/thumbs/checkpoint").status_code == 404
    assert http.get(f"/admin/jobs/{job_id}/thumbs/content?size=5000").status_code == 400
    full = http.get(f"/admin/jobs/{job_id}/files/style-0")
    assert full.status_code == 200 and full.data[:4] == b"\x89PNG"
    assert http.get(f"/admin/jobs/{job_id}/files/result").status_code == 404


def test_live_endpoint_reports_progress(
    http: FlaskClient, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    log_in(http, admin_key)
    body = http.get(f"/admin/live?id={job_id}&id={uuid.uuid4()}").json
    assert list(body["jobs"]) == [job_id]
    assert body["jobs"][job_id]["status"] == "queued"
    assert body["jobs"][job_id]["iterations"] == 2
    bad = http.get("/admin/live?id=nope")
    assert bad.status_code == 400
    assert bad.json["error"]["details"]["field"] == "id"


def test_stats_and_workers_pages_render(http: FlaskClient, admin_key: str) -> None:
    log_in(http, admin_key)
    stats = http.get("/admin/stats?hours=6")
    assert stats.status_code == 200
    assert stats.text.count("<svg") >= 3
    assert "Jobs per hour" in stats.text
    workers = http.get("/admin/workers")
    assert workers.status_code == 200
    assert "Workers" in workers.text


def test_the_session_key_is_one_file_shared_by_every_process(
    settings: Settings, admin_key: str
) -> None:
    """Two apps (two gunicorn processes) on one data dir accept each other's cookies."""
    first, second = create_app(settings), create_app(settings)
    try:
        one, two = first.test_client(), second.test_client()
        log_in(one, admin_key)
        cookie = one.get_cookie(SESSION_COOKIE, path="/admin")
        assert cookie is not None
        two.set_cookie(SESSION_COOKIE, cookie.value, path="/admin")
        assert two.get("/admin").status_code == 200
        path = settings.data_dir / SECRET_FILE
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert first.secret_key == second.secret_key == path.read_text().strip()
    finally:
        for app in (first, second):
            app.extensions[EXTENSION_KEY].db.dispose()


def test_a_forged_cookie_is_not_a_login(http: FlaskClient, settings: Settings) -> None:
    http.set_cookie(SESSION_COOKIE, "eyJhZG1pbl9pZCI6MX0.forged.signature", path="/admin")
    assert http.get("/admin").status_code == 302


def test_stylequeue_secret_key_is_used_when_set(settings: Settings, tmp_path: Path) -> None:
    own = replace(settings, secret_key="s" * 48, data_dir=tmp_path / "data")
    app = create_app(own)
    try:
        assert app.test_client().get("/admin/login").status_code == 200
        assert app.secret_key == "s" * 48
        assert not (tmp_path / "data" / SECRET_FILE).exists()
        # Other paths never need (or create) a key.
        other = create_app(replace(settings, data_dir=tmp_path / "other"))
        assert other.test_client().get("/healthz").status_code == 200
        assert not other.secret_key
        other.extensions[EXTENSION_KEY].db.dispose()
    finally:
        app.extensions[EXTENSION_KEY].db.dispose()
