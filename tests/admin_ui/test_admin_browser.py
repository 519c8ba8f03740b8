"""The /admin page end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

The real stack: ``stylequeue api`` (gunicorn, two processes, so the session key
must be shared) on a free port, a real Celery worker (``worker_stack``) and the
run's PostgreSQL database. The browser logs in; sees a job submitted after the
page loaded appear and its run time move, with no reload; filters the table,
searches a job by id, sees a finished job's result, loss curve and download,
the statistics and the workers refresh by themselves; cancels the queued jobs
through the bulk action's confirmation and a running job with its button; and
opens the API reference. No page may trip its Content-Security-Policy. Set
``ADMIN_SCREENSHOTS=/some/dir`` to keep a JPEG of each page (docs/admin.md's).

Under CI=true a missing Chromium or Playwright fails the test; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import free_port, required, stop_process_group

from shared.auth import create_client
from shared.db import Database
from shared.models import Job, JobStatus

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("ADMIN_SCREENSHOTS")
QUICK = {"size": 32, "iterations": 3, "scales": 1}
LONG = {"size": 64, "iterations": 5000, "scales": 1}  # minutes on a CPU: canceled long before
API_READY_SECONDS = 60.0
JOB_SECONDS = 180.0  # the worker is shared with the session's other tests
UI_MS = 30_000

pytestmark = pytest.mark.slow


@pytest.fixture
def api_server(worker_stack: Any, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``stylequeue api`` with the worker's settings; yields (base URL, admin key)."""
    settings = worker_stack.settings
    admin_key = "sq_admin_" + secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "STYLEQUEUE_DATABASE_URL": settings.database_url,
        "STYLEQUEUE_REDIS_URL": settings.redis_url,
        "STYLEQUEUE_REDIS_PREFIX": settings.redis_prefix,
        "STYLEQUEUE_DATA_DIR": str(settings.data_dir),
        "STYLEQUEUE_ADMIN_KEY": admin_key,
    }
    port = free_port()
    log_path = tmp_path / "api.log"
    command = str(Path(sys.executable).with_name("stylequeue"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [command, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + API_READY_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the API exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the API did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base, admin_key
    finally:
        stop_process_group(process)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        required(f"the playwright package is not installed ({exc})")
    if not Path(CHROMIUM).is_file():
        required(
            f"no Chromium at {CHROMIUM} (scripts/services installs it: apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _shot(page: Any, name: str, *, full_page: bool = True) -> None:
    """With ADMIN_SCREENSHOTS set, a JPEG of the page (1440 px wide) named after it."""
    if SCREENSHOTS:
        path = Path(SCREENSHOTS) / f"admin-{name}.jpg"
        page.screenshot(path=str(path), full_page=full_page, type="jpeg", quality=80)


def _changes(page: Any, locator: Any, what: str) -> str:
    """Wait until the text of ``locator`` changes (a live update, no reload); the new text."""
    before = locator.inner_text()
    page.wait_for_function(
        "([el, text]) => el.textContent !== text", arg=[locator.element_handle(), before]
    )
    after: str = locator.inner_text()
    assert after != before, what
    return after


@pytest.mark.parametrize("worker_stack", ["postgresql"], indirect=True)
def test_admin_page_in_chromium(
    worker_stack: Any,
    api_server: tuple[str, str],
    browser: Any,
    image_bytes: Callable[[str], bytes],
) -> None:
    base, admin_key = api_server
    db = Database(worker_stack.settings.database_url)
    with db.session() as session:
        client, client_key = create_client(session, f"browser-{secrets.token_hex(3)}")
        client_id = client.id
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {client_key}"})

    def submit(params: dict[str, int], styles: int = 1) -> str:
        files = [("content", ("content.png", image_bytes("tubingen"), "image/png"))]
        files += [
            ("style", (f"style{i}.png", image_bytes("starry_night"), "image/png"))
            for i in range(styles)
        ]
        # cache=false: a repeat of a job is queued for the worker, as the page must show.
        data = {"params": json.dumps(params), "cache": "false"}
        response = http.post("/v1/jobs", files=files, data=data)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def status(job_id: str) -> str:
        value: str = http.get(f"/v1/jobs/{job_id}").json()["status"]
        return value

    try:
        done = submit(QUICK)
        _wait("the quick job to succeed", lambda: status(done) == "succeeded", JOB_SECONDS)
        two_styles = submit(QUICK, styles=2)
        _wait(
            "the two-style job to succeed", lambda: status(two_styles) == "succeeded", JOB_SECONDS
        )

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(UI_MS)
        page.on("dialog", lambda dialog: dialog.accept())  # the cancel button's confirm()
        # Whatever the pages' Content-Security-Policy blocks, Chromium says on the console.
        blocked: list[str] = []
        page.on(
            "console",
            lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.on("pageerror", lambda e: blocked.append(f"page error: {e}"))

        # Logging in: /admin sends the browser to the login form, which sends it back.
        page.goto(f"{base}/admin")
        assert "/admin/login" in page.url
        _shot(page, "login")
        page.fill("#key", client_key)
        page.click("button[type=submit]")
        assert "is not an admin key" in page.inner_text("#login-error")
        page.fill("#key", admin_key)
        page.click("button[type=submit]")
        page.wait_for_selector("table#jobs")
        assert page.url.rstrip("/").endswith("/admin")
        assert page.locator(f'tr[data-job="{done}"]').count() == 1
        succeeded_before = page.locator('a.pill[data-status="succeeded"] .count').inner_text()

        # A job submitted after the page loaded appears without a reload, and its run time
        # moves while it runs; the pills' counts follow.
        running = submit(LONG)
        row = page.locator(f'tr[data-job="{running}"]')
        row.wait_for()
        page.wait_for_selector(f'tr[data-job="{running}"][data-status="running"]')
        _changes(page, row.locator('[data-role="run"]'), "the run time moves")
        _changes(page, row.locator('[data-role="run"]'), "and keeps moving")
        assert int(page.locator('a.pill[data-status="running"] .count').inner_text()) >= 1
        assert page.locator('a.pill[data-status="succeeded"] .count').inner_text() == (
            succeeded_before
        )
        # Both styles of the two-style job are shown.
        assert page.locator(f'tr[data-job="{two_styles}"] img[alt^="style"]').count() == 2

        # The client menu filters as soon as it changes (admin.js: no inline handler).
        client_name = page.eval_on_selector(
            "select[name=client]",
            "(s, id) => [...s.options].find(o => o.text.startsWith(id)).text",
            "browser-",
        )
        page.select_option("select[name=client]", label=client_name)
        page.wait_for_url("**/admin?client=*")
        assert page.locator(f'tr[data-job="{done}"]').count() == 1
        page.goto(f"{base}/admin")

        # A status filter shows only jobs in that status.
        page.click('.status-filter a[data-status="succeeded"]')
        page.wait_for_url("**/admin?status=succeeded")
        statuses = page.eval_on_selector_all(
            "table#jobs tbody tr[data-job]", "rows => rows.map(r => r.dataset.status)"
        )
        assert statuses and set(statuses) == {"succeeded"}
        assert page.locator(f'tr[data-job="{running}"]').count() == 0
        # A finished job's bar is full: admin.js gave it its width (the page has no inline style).
        full = page.locator(f'tr[data-job="{done}"] [data-role="bar"]')
        assert full.evaluate("bar => bar.style.width") == "100%"

        # The finished job's result thumbnail is a real image that loaded.
        result = page.locator(f'tr[data-job="{done}"] img[data-role="result"]')
        result.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=result.element_handle()
        )
        assert result.evaluate("img => img.naturalWidth") > 0

        # The search by id goes straight to the job's page.
        page.fill("#search input[name=q]", done[:13])
        page.click("#search button[type=submit]")
        page.wait_for_url(f"**/admin/jobs/{done}")

        # The job page: parameters, timeline, images, its loss curve, the download.
        assert "succeeded" in page.inner_text("#timeline")
        curve = page.locator('img[data-role="losses"]')
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=curve.element_handle()
        )
        assert page.get_attribute('[data-role="download"]', "href") == (
            f"/admin/jobs/{done}/files/result?download=1"
        )
        with page.expect_download() as downloaded:
            page.click('[data-role="download"]')
        assert downloaded.value.suggested_filename == f"{done}-result.png"
        _shot(page, "job")

        # Statistics and workers refresh by themselves; the worker's last beat counts up.
        page.goto(f"{base}/admin/stats")
        page.wait_for_selector("#chart-queue svg")
        assert "(last 24 h)" in page.inner_text("#stats-body")
        _shot(page, "stats")
        page.goto(f"{base}/admin/stats?hours=720")
        assert "Jobs per day" in page.inner_text("#stats-body")
        page.goto(f"{base}/admin/workers")
        worker_name = http.get(f"/v1/jobs/{running}").json()["worker"]
        worker_row = page.locator(f'#workers tr[data-worker="{worker_name}"]')
        worker_row.wait_for()
        _changes(page, worker_row.locator("[data-beat-at]"), "the last beat counts")
        assert worker_row.locator('[data-role="current-job"]').inner_text() == running[:8]
        _shot(page, "workers")

        # The running job's progress and live preview refresh without a reload.
        page.goto(f"{base}/admin?status=running&status=queued")
        row = page.locator(f'tr[data-job="{running}"]')
        row.wait_for()
        _changes(page, row.locator('[data-role="progress-text"]'), "the progress moves")
        preview = row.locator('img[data-role="preview"]')
        preview.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0 && img.src.includes('v=')",
            arg=preview.element_handle(),
        )
        # The running job's own page: its live preview, refreshed at the page's 320 px size
        # (the 64 px test image is not enlarged, so the src says which size was asked),
        # its run time and lease moving, its loss curve drawn.
        page.goto(f"{base}/admin/jobs/{running}")
        big = page.locator('img[data-role="preview"]')
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0 && img.src.includes('v=')"
            " && img.src.includes('size=320')",
            arg=big.element_handle(),
        )
        _changes(page, page.locator('[data-role="run"]'), "the job page's run time moves")
        _changes(page, page.locator('[data-role="lease"]'), "the lease is renewed")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0 && img.src.includes('v=')",
            arg=page.locator('img[data-role="losses"]').element_handle(),
        )
        _shot(page, "job-running")

        # A bulk action asks first: the queued job of this client, canceled from the page.
        queued = submit(QUICK)  # the worker is busy with the long job: it waits
        page.goto(f"{base}/admin?client={client_id}")
        page.locator(f'tr[data-job="{queued}"]').wait_for()
        page.click('[data-role="bulk-cancel"]')
        page.wait_for_url("**/admin/bulk?*action=cancel*")
        assert "queued job" in page.inner_text("#bulk-summary")
        _shot(page, "bulk")
        page.click('[data-role="bulk-confirm"]')
        page.wait_for_selector(".flash.ok")
        assert "canceled" in page.inner_text(".flash.ok")
        _wait("the queued job to be canceled", lambda: status(queued) == "canceled", 30)

        # Cancel the running job from the table: the page and the database both say canceled.
        page.goto(f"{base}/admin?status=running&status=queued")
        row = page.locator(f'tr[data-job="{running}"]')
        row.wait_for()
        row.locator('[data-role="cancel"]').click()
        page.wait_for_selector(f'tr[data-job="{running}"][data-status="canceled"]')
        assert page.locator(f'tr[data-job="{running}"] .chip').inner_text() == "canceled"
        with db.session() as session:
            job = session.get(Job, uuid.UUID(running))
            assert job is not None and job.status is JobStatus.CANCELED
        # Its timeline names the admin who canceled it.
        page.goto(f"{base}/admin/jobs/{running}")
        assert "by " in page.inner_text("#timeline")
        page.goto(f"{base}/admin?client={client_id}")
        page.wait_for_selector(f'tr[data-job="{queued}"][data-status="canceled"]')
        _shot(page, "jobs")

        # The API reference: Swagger UI from this origin, every operation listed.
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock")
        operations = sum(
            len(ops) for ops in httpx.get(f"{base}/openapi.json").json()["paths"].values()
        )
        assert page.locator(".opblock").count() == operations
        page.locator(".opblock-summary").first.click()
        page.wait_for_selector(
            ".opblock-description-wrapper code, .opblock-description-wrapper pre"
        )
        _shot(page, "docs", full_page=False)
        assert blocked == [], blocked

        # Logging out ends the session: the page asks for the key again.
        page.goto(f"{base}/admin")
        page.click(".who button[type=submit]")
        page.wait_for_url("**/admin/login")
        page.goto(f"{base}/admin")
        assert "/admin/login" in page.url
    finally:
        http.close()
        db.dispose()
