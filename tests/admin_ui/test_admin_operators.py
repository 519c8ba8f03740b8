"""What operators reach /admin for besides the table itself, through Flask's test client on
both backends: counts and search, new jobs in the live poll, bulk actions behind a
confirmation, who did what (timeline, log lines, the client's /result), the loss curve,
the result's download, statistics by day with the queue's depth, the workers page."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from admin_ui_helpers import Submit, csrf_of, log_in
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from api.services import EXTENSION_KEY
from shared import jobs, workers
from shared.loss_series import MAX_POINTS, LossSeries, save_losses
from shared.models import ApiClient, Job, JobStatus
from shared.stats import forget_cached_counts, job_stats
from shared.storage import result_file


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    with app.extensions[EXTENSION_KEY].db.session() as s:
        yield s


def _fail(session: Session, job_id: str, code: str = "out_of_memory") -> None:
    claim = jobs.claim_job(session, uuid.UUID(job_id), worker="w-fail/1", lease_seconds=30)
    assert claim is not None
    jobs.fail_job(session, claim, code=code, message=f"{code} happened")


def _row(html: str, job_id: str) -> str:
    return html.split(f'data-job="{job_id}"')[1].split("</tr>")[0]


def test_pills_count_each_status_under_the_other_filters_and_search_finds_a_job(
    http: FlaskClient,
    session: Session,
    submit: Submit,
    make_api_key: Callable[..., str],
    admin_key: str,
) -> None:
    alice = make_api_key("alice")
    queued = [submit(alice) for _ in range(3)]
    _fail(session, queued[0])
    log_in(http, admin_key)
    client_id = session.get(Job, uuid.UUID(queued[1]))
    assert client_id is not None
    page = http.get(f"/admin?client={client_id.client_id}").text
    assert re.search(r'data-count="queued">2<', page) and re.search(r'data-count="failed">1<', page)
    assert re.search(r'data-count="total">3<', page)
    # A status filter keeps the other counts: "1 of 3".
    only_failed = http.get(f"/admin?client={client_id.client_id}&status=failed").text
    assert re.search(r'data-count="queued">2<', only_failed) and "1 of" in only_failed
    # The search takes a whole id (straight to its page) or its beginning, any case.
    whole = http.get(f"/admin?q={queued[1].upper()}")
    assert whole.status_code == 302 and whole.headers["Location"] == f"/admin/jobs/{queued[1]}"
    prefix = queued[2].replace("-", "")[:10]
    found = http.get(f"/admin?q={prefix[:4]}-{prefix[4:]}")
    assert found.status_code in (200, 302)
    if found.status_code == 200:
        assert f'data-job="{queued[2]}"' in found.text
    bad = http.get("/admin?q=not-hex")
    assert bad.status_code == 400 and "q" in bad.text


def test_the_live_poll_brings_the_jobs_submitted_since_and_their_times(
    http: FlaskClient, session: Session, submit: Submit, api_key: str, admin_key: str
) -> None:
    first = submit(api_key)
    log_in(http, admin_key)
    page = http.get("/admin").text
    newest = re.search(r'data-newest="([^"]+)"', page)
    assert newest is not None and "data-live-new" in page
    later = submit(api_key)
    body = http.get(f"/admin/live?id={first}&since={newest.group(1)}&here=/admin").json
    assert f'data-job="{later}"' in body["rows"] and f'data-job="{first}"' not in body["rows"]
    assert body["newest"] != newest.group(1) and body["more"] is False
    assert body["counts"]["queued"] >= 2 and body["total"] >= 2
    # Nothing newer since: no row, the same cursor.
    again = http.get(f"/admin/live?since={body['newest']}").json
    assert "data-job" not in again["rows"] and again["newest"] == body["newest"]
    # A running job's wait stops and its run time counts from its start.
    claim = jobs.claim_job(session, uuid.UUID(first), worker="w-live/1", lease_seconds=30)
    assert claim is not None
    state = http.get(f"/admin/live?id={first}").json["jobs"][first]
    assert state["status"] == "running" and state["run"] != "–" and "w-live/1" in state["lease"]
    assert http.get("/admin/live?since=bogus").status_code == 400


def test_bulk_retry_and_cancel_ask_first_then_act_and_name_the_admin(
    http: FlaskClient,
    session: Session,
    submit: Submit,
    make_api_key: Callable[..., str],
    admin_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bob = make_api_key("bob")
    mine = [submit(bob) for _ in range(4)]
    for job_id in mine[:2]:
        _fail(session, job_id)
    client = session.get(Job, uuid.UUID(mine[0]))
    assert client is not None
    csrf = log_in(http, admin_key)
    confirm = http.get(f"/admin/bulk?action=retry&client={client.client_id}").text
    assert "<strong>2</strong> failed jobs" in confirm and "Retry 2 jobs" in confirm
    assert csrf_of(confirm) == csrf
    # Without the token nothing happens.
    refused = http.post("/admin/bulk", data={"action": "retry", "client": client.client_id})
    assert refused.status_code == 403
    assert session.get(Job, uuid.UUID(mine[0])).status is JobStatus.FAILED  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO, logger="shared.admin_actions"):
        done = http.post(
            "/admin/bulk",
            data={"action": "retry", "client": client.client_id, "csrf_token": csrf},
        )
    assert done.status_code == 303
    flashed = http.get(done.headers["Location"]).text
    assert "2 failed jobs queued again" in flashed
    session.expire_all()
    assert {session.get(Job, uuid.UUID(j)).status for j in mine} == {JobStatus.QUEUED}  # type: ignore[union-attr]
    retried = [r for r in caplog.records if getattr(r, "event", None) == "retried"]
    assert {str(getattr(r, "job_id", "")) for r in retried} == set(mine[:2])
    assert all(getattr(r, "by", "").startswith("ops-") for r in retried)
    # Cancel every queued job of the client: four.
    confirm = http.get(f"/admin/bulk?action=cancel&client={client.client_id}").text
    assert "<strong>4</strong> queued jobs of client bob-" in confirm
    http.post(
        "/admin/bulk", data={"action": "cancel", "client": client.client_id, "csrf_token": csrf}
    )
    session.expire_all()
    assert {session.get(Job, uuid.UUID(j)).status for j in mine} == {JobStatus.CANCELED}  # type: ignore[union-attr]
    detail = http.get(f"/admin/jobs/{mine[3]}").text
    assert "by ops-" in detail and "admin_client_id=" in detail
    assert http.get("/admin/bulk?action=explode").status_code == 400


def test_admin_actions_are_logged_and_files_deleted_by_an_operator_say_so(
    http: FlaskClient,
    session: Session,
    submit: Submit,
    api_key: str,
    admin_key: str,
    app: Flask,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = submit(api_key)
    job = uuid.UUID(job_id)
    claim = jobs.claim_job(session, job, worker="w-done/1", lease_seconds=30)
    assert claim is not None
    name = result_file(claim.attempt)
    app.extensions[EXTENSION_KEY].storage.put(job, name, b"\x89PNG not really")
    jobs.finish_job(session, claim, result_file=name)
    csrf = log_in(http, admin_key)
    page = http.get(f"/admin/jobs/{job_id}").text
    assert 'data-role="download"' in page
    download = http.get(f"/admin/jobs/{job_id}/files/result?download=1")
    assert download.status_code == 200
    assert f"attachment; filename={job_id}-result.png" in download.headers["Content-Disposition"]
    with caplog.at_level(logging.INFO, logger="shared.admin_actions"):
        http.post(f"/admin/jobs/{job_id}/delete-files", data={"csrf_token": csrf})
    lines = [r for r in caplog.records if getattr(r, "event", None) == "files_deleted"]
    assert len(lines) == 1 and str(getattr(lines[0], "job_id", "")) == job_id
    assert getattr(lines[0], "by", "").startswith("ops-")
    assert getattr(lines[0], "admin_client_id", None) is not None
    result = http.get(f"/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {api_key}"})
    assert result.status_code == 404 and result.json["error"]["code"] == "result_missing"
    assert "deleted by an operator" in result.json["error"]["message"]
    assert "retention" not in result.json["error"]["message"]
    # The JSON API's cancel is logged as the admin's too, not as the job's client's.
    other = submit(api_key)
    admin_header = {"Authorization": f"Bearer {admin_key}"}
    with caplog.at_level(logging.INFO, logger="shared.admin_actions"):
        http.post(f"/v1/admin/jobs/{other}/cancel", headers=admin_header)
    cancel = [r for r in caplog.records if getattr(r, "event", None) == "cancel_requested"]
    assert cancel and str(getattr(cancel[-1], "job_id", "")) == other
    assert getattr(cancel[-1], "by", "").startswith("ops-")
    timeline = http.get(f"/v1/admin/jobs/{other}", headers=admin_header).json["events"]
    assert timeline[-1]["kind"] == "canceled" and timeline[-1]["data"]["by"].startswith("ops-")


def test_a_loss_series_keeps_at_most_its_points_evenly_and_the_latest() -> None:
    series = LossSeries()
    for i in range(1, 1001):
        series.add(i, 1000.0 / i, 1.0, 2.0, 0.5)
    points = series.points()
    assert len(points) <= MAX_POINTS and len(series) == 1000
    iterations = [int(p[0]) for p in points]
    assert iterations[0] == 1 and iterations[-1] == 1000 and iterations == sorted(iterations)
    gaps = {b - a for a, b in zip(iterations[:-2], iterations[1:-1], strict=True)}
    assert len(gaps) == 1, gaps  # evenly spaced but for the latest
    assert points[-1][1] == pytest.approx(1.0)


def test_the_job_page_draws_every_attempts_loss_curve(
    http: FlaskClient, session: Session, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    log_in(http, admin_key)
    assert "no loss reported yet" in http.get(f"/admin/jobs/{job_id}/losses.svg").text
    for attempt, start in ((1, 1), (2, 22)):
        series = LossSeries()
        for i in range(start, start + 30):
            series.add(i, 1e6 / i, 1e3, 1e5 / i, 10.0)
        save_losses(session, uuid.UUID(job_id), attempt, series.points())
    svg = http.get(f"/admin/jobs/{job_id}/losses.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert svg.text.count("<polyline") >= 4  # two attempts, content and style
    assert "attempt 1" in svg.text and "attempt 2" in svg.text
    assert 'data-role="losses"' in http.get(f"/admin/jobs/{job_id}").text
    live = http.get(f"/admin/live?id={job_id}").json["jobs"][job_id]
    assert live["losses"] and "losses.svg?v=" in live["losses"]


def test_a_row_shows_every_style_the_last_preview_and_no_wait_for_a_job_that_never_ran(
    http: FlaskClient,
    submit: Submit,
    image_bytes: Callable[[str], bytes],
    api_key: str,
    admin_key: str,
    session: Session,
) -> None:
    import io

    response = http.post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
            "style": [
                (io.BytesIO(image_bytes("starry_night")), "a.png"),
                (io.BytesIO(image_bytes("starry_night")), "b.png"),
            ],
            "params": json.dumps({"size": 32, "iterations": 2, "scales": 1}),
        },
        headers={"Authorization": f"Bearer {api_key}"},
    )
    two = response.json["id"]
    csrf = log_in(http, admin_key)
    never = submit(api_key)
    http.post(f"/admin/jobs/{never}/cancel", data={"csrf_token": csrf})
    page = http.get("/admin?limit=100").text
    row = _row(page, two)
    assert "thumbs/style-0" in row and "thumbs/style-1" in row
    never_row = _row(page, never)
    assert 'data-role="wait"' in never_row and "never started" in never_row
    assert re.search(r'data-role="wait"[^>]*>–<', never_row)
    # A job canceled after a preview shows it, marked as the last one.
    job = session.get(Job, uuid.UUID(two))
    assert job is not None
    job.status, job.preview_file, job.iteration = JobStatus.CANCELED, "preview.a1.i6.png", 6
    job.finished_at = job.created_at
    session.commit()
    row = _row(http.get("/admin?limit=100").text, two)
    assert "thumbs/preview" in row and "last preview (6/2)" in row


def test_statistics_by_day_past_two_days_with_outcomes_and_the_queue_depth(
    http: FlaskClient, session: Session, admin_key: str
) -> None:
    client = ApiClient(name="stats", key_hash=uuid.uuid4().hex * 2)
    session.add(client)
    session.commit()
    # A window far in the past that this test's jobs fall in. Other tests' jobs may be
    # there too (one still queued from earlier counts in every later hour's depth), so
    # what is asserted is what this test's jobs add to the figures.
    now = datetime(2001, 3, 10, 12, 30, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 3000)
    base = now.replace(minute=0) - timedelta(hours=30)
    forget_cached_counts()
    daily_before = job_stats(session, now=now, hours=24 * 7)
    hourly_before = job_stats(session, now=now, hours=48)
    specs = [  # (created after base, started after, finished after, status)
        (0, 10, 20, JobStatus.SUCCEEDED),
        (0, None, 40, JobStatus.CANCELED),  # canceled while queued
        (60, 3 * 3600, 3 * 3600 + 5, JobStatus.FAILED),  # waited three hours
        (120, None, None, JobStatus.QUEUED),  # still waiting
    ]
    for created, started, finished, status in specs:
        at = base + timedelta(seconds=created)
        session.add(
            Job(
                client_id=client.id,
                status=status,
                params={},
                n_styles=1,
                iterations=2,
                created_at=at,
                started_at=None if started is None else base + timedelta(seconds=started),
                finished_at=None if finished is None else base + timedelta(seconds=finished),
            )
        )
    session.commit()
    forget_cached_counts()
    daily = job_stats(session, now=now, hours=24 * 7)
    assert daily.bucket_hours == 24 and len(daily.buckets) == 8  # 7 days of hours: 8 dates

    def added(figure: str) -> int:
        return sum(getattr(b, figure) for b in daily.buckets) - sum(
            getattr(b, figure) for b in daily_before.buckets
        )

    assert added("created") == 4
    assert (added("succeeded"), added("failed"), added("canceled")) == (1, 1, 1)
    hourly = job_stats(session, now=now, hours=48)
    assert hourly.bucket_hours == 1 and len(hourly.buckets) == 48
    before = {b.start: b.queued for b in hourly_before.buckets}
    depth = {b.start: b.queued - before[b.start] for b in hourly.buckets}
    hour = base.replace(minute=0)
    assert depth[hour] == 2  # the failed one (waiting three hours) and the queued one
    assert depth[hour + timedelta(hours=3)] == 1  # the failed one has started
    assert depth[hourly.buckets[-1].start] == 1
    log_in(http, admin_key)
    page = http.get("/admin/stats?hours=720").text
    assert "Jobs per day" in page and "(720 h)" not in page and "last 30 days" in page
    assert "Queue depth" in page and "over the" in page
    assert re.search(r"over the \d+ jobs? that started", page)
    assert "canceled (last 30 days)" in page
    body = http.get("/admin/stats?hours=24&fragment=1").text
    assert "<html" not in body and "Jobs per hour" in body


def test_a_worker_running_a_batch_shows_every_job_under_its_lease(
    http: FlaskClient, session: Session, submit: Submit, api_key: str, admin_key: str
) -> None:
    name = f"batch-{uuid.uuid4().hex[:6]}/21"
    workers.register_worker(
        session, name=name, hostname="batch-host", pid=21, device=workers.DeviceInfo("cpu")
    )
    ids = [submit(api_key) for _ in range(3)]
    claims = [
        jobs.claim_job(session, uuid.UUID(job_id), worker=name, lease_seconds=30) for job_id in ids
    ]
    workers.job_started(session, name, uuid.UUID(ids[1]))  # the registry names one of them
    ended = claims[2]  # the third has left the batch: it failed
    assert ended is not None and all(claims)
    jobs.fail_job(session, ended, code="out_of_memory", message="CUDA out of memory")
    log_in(http, admin_key)
    page = http.get("/admin/workers").text
    row = page.split(f'data-worker="{name}"')[1].split("</tr>")[0]
    current = re.findall(r'data-role="current-job"[^>]*>([0-9a-f]{8})<', row)
    others = re.findall(r'data-role="batch-job"[^>]*>([0-9a-f]{8})<', row)
    assert current == [ids[1][:8]], row
    assert "batch of 2" in row and others == [ids[0][:8]], row
    # The one that left shows only as its last error.
    assert ids[2][:8] not in current + others and "out_of_memory" in row


def test_the_workers_page_shows_host_pid_device_memory_and_folds_the_long_gone(
    http: FlaskClient, session: Session, submit: Submit, api_key: str, admin_key: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    alive, recent, old = f"gpu-{tag}/11", f"gone-{tag}/12", f"old-{tag}/13"
    gpu = workers.DeviceInfo("cuda:0", "NVIDIA H100 80GB HBM3", 85_000_000_000)
    now = datetime.now(UTC)
    workers.register_worker(session, name=alive, hostname=f"gpu-{tag}", pid=11, device=gpu)
    workers.register_worker(
        session,
        name=recent,
        hostname=f"gone-{tag}",
        pid=12,
        device=gpu,
        now=now - timedelta(seconds=60),
    )
    workers.register_worker(
        session,
        name=old,
        hostname=f"old-{tag}",
        pid=13,
        device=workers.DeviceInfo("cpu"),
        now=now - timedelta(hours=2),
    )
    # The gone worker's row still names a job that failed since: it is not its current job.
    failed = submit(api_key)
    claim = jobs.claim_job(session, uuid.UUID(failed), worker=recent, lease_seconds=30)
    assert claim is not None
    workers.job_started(session, recent, uuid.UUID(failed))
    jobs.fail_job(session, claim, code="out_of_memory", message="CUDA out of memory")
    from shared.models import Worker

    row = session.get(Worker, recent)
    assert row is not None
    row.last_heartbeat_at = now - timedelta(seconds=60)
    session.commit()
    running = submit(api_key)
    claim2 = jobs.claim_job(session, uuid.UUID(running), worker=alive, lease_seconds=30)
    assert claim2 is not None
    workers.job_started(session, alive, uuid.UUID(running))
    log_in(http, admin_key)
    page = http.get("/admin/workers").text
    shown = page.split('id="folded-workers"')[0]
    alive_row = shown.split(f'data-worker="{alive}"')[1].split("</tr>")[0]
    assert f"gpu-{tag}" in alive_row and ">11<" in alive_row and "79.2 GiB" in alive_row
    assert running[:8] in alive_row
    gone_row = shown.split(f'data-worker="{recent}"')[1].split("</tr>")[0]
    assert "gone" in gone_row and failed[:8] in gone_row  # as its last error, not its job
    assert 'data-role="current-job"' not in gone_row and "out_of_memory" in gone_row
    assert f'data-worker="{old}"' not in shown and f'data-worker="{old}"' in page
    # Its failed count is the statistics' (jobs by their worker), for the same window.
    stats = job_stats(session, hours=24)
    mine = {w.worker: w for w in stats.workers}[recent]
    assert mine.failed == 1 and re.search(
        r'<td class="num">1</td>\s*<td class="num">0</td>', gone_row
    )
    assert "<html" not in http.get("/admin/workers?fragment=1").text


def test_every_page_answers_json_errors_and_csp_without_inline_script(
    http: FlaskClient, admin_key: str, submit: Submit, api_key: str
) -> None:
    job_id = submit(api_key)
    log_in(http, admin_key)
    for path in (
        "/admin",
        f"/admin/jobs/{job_id}",
        "/admin/stats?hours=168",
        "/admin/workers",
        "/admin/bulk?action=cancel",
    ):
        response = http.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        html = response.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert not re.search(r"<[^>]+\sstyle\s*=", html), path
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), path


def test_a_resumed_attempt_shows_its_own_iteration_not_the_dead_attempts(
    http: FlaskClient, session: Session, submit: Submit, api_key: str, admin_key: str
) -> None:
    from datetime import timedelta as td

    from sqlalchemy import update

    from shared import leases
    from shared.models import utcnow

    job_id = submit(api_key, {"size": 32, "iterations": 30, "scales": 1})
    job = uuid.UUID(job_id)
    first = jobs.claim_job(session, job, worker="w-dead/1", lease_seconds=30)
    assert first is not None
    leases.heartbeat(session, first, iteration=29, iterations=30, eta_seconds=1.0, lease_seconds=30)
    session.execute(
        update(Job).where(Job.id == job).values(lease_expires_at=utcnow() - td(seconds=1))
    )
    session.commit()
    second = jobs.claim_job(session, job, worker="w-next/2", lease_seconds=30)
    assert second is not None
    leases.record_resumed(session, second, iteration=22)
    log_in(http, admin_key)
    state = http.get(f"/admin/live?id={job_id}").json["jobs"][job_id]
    assert (state["iteration"], state["attempts"]) == (22, 2)
    assert "22/30" in http.get(f"/admin/jobs/{job_id}").text
