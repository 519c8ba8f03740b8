"""The admin API: admin keys only, filters, keyset pages, timeline, stats, workers,
cancel, retry and delete-files. On PostgreSQL and SQLite.

The test database is shared with the whole session, so each test's jobs are its
own: fresh clients, and created_at far in the past where a test lists every client.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from service_helpers import wait_for, worker_context
from sqlalchemy.orm import Session

from api.admin_schemas import AdminJobDetailOut, AdminJobList, StatsOut, WorkerList
from api.services import EXTENSION_KEY
from shared import admin, admin_reads, jobs, leases
from shared.auth import authenticate, create_client
from shared.models import ApiClient, Job, JobStatus
from shared.params import parse_params
from shared.settings import Settings
from shared.stats import forget_cached_counts, job_stats
from shared.storage import CONTENT_FILE, RESULT_FILE
from worker.context import WorkerContext
from worker.runner import Outcome, run_job

TINY = {"size": 32, "iterations": 4, "scales": 1}
BASE_TIME = datetime(2001, 3, 4, 5, 0, tzinfo=UTC)  # before any other test's job
# Each history its own day. (A random day of 3,000 collided about once in seven runs:
# two histories in one window, and a filter saw the other's jobs.)
_DAYS = itertools.count()


@pytest.fixture
def admin_auth(make_api_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_api_key('admin', is_admin=True)}"}


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    with app.extensions[EXTENSION_KEY].db.session() as s:
        yield s


def new_client(session: Session, name: str = "c") -> ApiClient:
    client, _ = create_client(session, f"{name}-{uuid.uuid4().hex[:6]}")
    return client


def insert_job(
    session: Session,
    client_id: int,
    created_at: datetime,
    *,
    status: JobStatus = JobStatus.QUEUED,
    worker: str | None = None,
    started_after: float | None = None,
    run_seconds: float | None = None,
    job_id: uuid.UUID | None = None,
) -> Job:
    started = None if started_after is None else created_at + timedelta(seconds=started_after)
    finished = None
    if started is not None and run_seconds is not None:
        finished = started + timedelta(seconds=run_seconds)
    job = Job(
        id=job_id or uuid.uuid4(),
        client_id=client_id,
        status=status,
        params=parse_params(TINY).model_dump(mode="json"),
        n_styles=1,
        iterations=4,
        worker=worker,
        created_at=created_at,
        started_at=started,
        finished_at=finished,
        updated_at=created_at,
        attempts=0 if started is None else 1,
    )
    session.add(job)
    session.commit()
    return job


# ---------------------------------------------------------------- who may call


ENDPOINTS = [
    ("get", "/v1/admin/jobs"),
    ("get", f"/v1/admin/jobs/{uuid.uuid4()}"),
    ("post", f"/v1/admin/jobs/{uuid.uuid4()}/cancel"),
    ("post", f"/v1/admin/jobs/{uuid.uuid4()}/retry"),
    ("delete", f"/v1/admin/jobs/{uuid.uuid4()}/files"),
    ("get", "/v1/admin/stats"),
    ("get", "/v1/admin/workers"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_admin_endpoints_answer_401_without_a_key_and_403_to_a_client_key(
    http: FlaskClient, auth: dict[str, str], method: str, path: str
) -> None:
    anonymous = getattr(http, method)(path)
    assert anonymous.status_code == 401
    assert anonymous.json["error"]["code"] == "missing_api_key"
    client = getattr(http, method)(path, headers=auth)
    assert client.status_code == 403
    assert client.json["error"]["code"] == "admin_required"


def test_the_admin_key_from_the_environment_is_an_admin(settings: Settings) -> None:
    from dataclasses import replace

    from api import create_app

    app = create_app(replace(settings, admin_key="sq_the-operators-key"))
    try:
        response = app.test_client().get(
            "/v1/admin/stats", headers={"Authorization": "Bearer sq_the-operators-key"}
        )
        assert response.status_code == 200
        StatsOut.model_validate(response.json)
    finally:
        app.extensions[EXTENSION_KEY].db.dispose()


# ---------------------------------------------------------------- the list


def _list(http: FlaskClient, admin_auth: dict[str, str], query: dict[str, Any]) -> dict[str, Any]:
    response = http.get("/v1/admin/jobs", query_string=query, headers=admin_auth)
    assert response.status_code == 200, response.json
    AdminJobList.model_validate(response.json)
    body: dict[str, Any] = response.json
    return body


def _walk(
    http: FlaskClient, admin_auth: dict[str, str], query: dict[str, Any]
) -> tuple[list[str], int]:
    """Every page of a query: the job ids in order and the number of pages."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        body = _list(http, admin_auth, {**query, **({"cursor": cursor} if cursor else {})})
        pages += 1
        ids += [j["id"] for j in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        assert pages < 100


@pytest.fixture
def history(session: Session) -> dict[str, Any]:
    """Two clients' jobs over a day in 2001, some created at the same instant."""
    start = BASE_TIME + timedelta(days=next(_DAYS))
    alice, bob = new_client(session, "alice"), new_client(session, "bob")
    statuses = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELED]
    made: list[Job] = []
    for i in range(30):
        client = alice if i % 3 else bob
        status = statuses[i % 4]
        created = start + timedelta(minutes=(i // 2) * 10)  # pairs share a timestamp
        ran = status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        worker = f"host-{i % 2}/{100 + i % 2}" if ran else None
        made.append(
            insert_job(
                session,
                client.id,
                created,
                status=status,
                worker=worker,
                started_after=5.0 if ran else None,
                run_seconds=60.0 if ran else None,
            )
        )
    newest_first = sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
    return {
        "start": start,
        "end": start + timedelta(days=1),
        "alice": alice.id,
        "bob": bob.id,
        "jobs": newest_first,
    }


def _window(history: dict[str, Any]) -> dict[str, str]:
    return {
        "created_from": history["start"].isoformat(),
        "created_to": history["end"].isoformat().replace("+00:00", "Z"),
    }


def _expected(history: dict[str, Any], keep: Callable[[Job], bool]) -> list[str]:
    return [str(j.id) for j in history["jobs"] if keep(j)]


def test_pages_walk_every_job_once_newest_first_with_ties(
    http: FlaskClient, admin_auth: dict[str, str], history: dict[str, Any]
) -> None:
    ids, pages = _walk(http, admin_auth, {**_window(history), "limit": 7})
    assert ids == _expected(history, lambda j: True)
    assert pages == 5  # 30 jobs, 7 a page


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ({"status": "failed"}, lambda j, h: j.status is JobStatus.FAILED),
        (
            {"status": "failed,canceled"},
            lambda j, h: j.status in (JobStatus.FAILED, JobStatus.CANCELED),
        ),
        (
            {"status": ["queued", "succeeded"]},
            lambda j, h: j.status in (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        ),
        ({"client": "bob"}, lambda j, h: j.client_id == h["bob"]),
        ({"worker": "host-1/101"}, lambda j, h: j.worker == "host-1/101"),
        (
            {"client": "alice", "status": "succeeded"},
            lambda j, h: j.client_id == h["alice"] and j.status is JobStatus.SUCCEEDED,
        ),
        (
            {"worker": "host-0/100", "status": "failed,succeeded"},
            lambda j, h: j.worker == "host-0/100",
        ),
    ],
    ids=["status", "statuses", "repeated", "client", "worker", "client+status", "worker+status"],
)
def test_each_filter_and_its_pages(
    http: FlaskClient,
    admin_auth: dict[str, str],
    history: dict[str, Any],
    query: dict[str, Any],
    keep: Callable[[Job, dict[str, Any]], bool],
) -> None:
    query = dict(query)
    if "client" in query:
        query["client_id"] = history[query.pop("client")]
    ids, _ = _walk(http, admin_auth, {**_window(history), **query, "limit": 3})
    expected = _expected(history, lambda j: keep(j, history))
    assert expected and ids == expected


def test_the_time_range_is_inclusive_then_exclusive(
    http: FlaskClient, admin_auth: dict[str, str], history: dict[str, Any]
) -> None:
    start = history["start"]
    query = {
        "created_from": (start + timedelta(minutes=20)).isoformat(),
        "created_to": (start + timedelta(minutes=50)).isoformat(),
        "limit": 100,
    }
    ids, _ = _walk(http, admin_auth, query)
    expected = _expected(
        history,
        lambda j: start + timedelta(minutes=20) <= j.created_at < start + timedelta(minutes=50),
    )
    assert len(expected) == 6 and ids == expected


def test_a_row_shows_its_client_and_the_client_json(
    http: FlaskClient, admin_auth: dict[str, str], history: dict[str, Any], session: Session
) -> None:
    body = _list(http, admin_auth, {**_window(history), "client_id": history["bob"], "limit": 1})
    row = body["jobs"][0]
    name = session.get(ApiClient, history["bob"])
    assert name is not None
    assert row["client"] == {"id": history["bob"], "name": name.name}
    assert row["id"] == _expected(history, lambda j: j.client_id == history["bob"])[0]
    assert row["params"]["size"] == 32 and row["urls"]["self"] == f"/v1/jobs/{row['id']}"


def test_the_shared_list_and_the_api_agree(session: Session, history: dict[str, Any]) -> None:
    filters = admin.JobFilters(
        statuses=(JobStatus.QUEUED,), created_from=history["start"], created_to=history["end"]
    )
    page = admin.list_jobs(session, filters, limit=100, cursor=None)
    assert [str(j.id) for j in page.items] == _expected(
        history, lambda j: j.status is JobStatus.QUEUED
    )
    assert page.next_cursor is None


BAD_QUERIES = [
    ("/v1/admin/jobs", {"status": "done"}, "status"),
    ("/v1/admin/jobs", {"status": "queued,nope"}, "status"),
    ("/v1/admin/jobs", {"client_id": "abc"}, "client_id"),
    ("/v1/admin/jobs", {"client_id": "0"}, "client_id"),
    ("/v1/admin/jobs", {"client_id": str(2**40)}, "client_id"),
    ("/v1/admin/jobs", {"created_from": "yesterday"}, "created_from"),
    ("/v1/admin/jobs", {"created_from": "2026-01-01T00:00:00"}, "created_from"),
    ("/v1/admin/jobs", {"created_to": "0001-01-01T00:00:00+05:00"}, "created_to"),
    (
        "/v1/admin/jobs",
        {"created_from": "2026-01-02T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
        "created_to",
    ),
    ("/v1/admin/jobs", {"worker": "a\x00b"}, "worker"),
    ("/v1/admin/jobs", {"limit": "0"}, "limit"),
    ("/v1/admin/jobs", {"limit": "101"}, "limit"),
    ("/v1/admin/jobs", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/admin/jobs", {"sort": "asc"}, "sort"),
    ("/v1/admin/stats", {"hours": "0"}, "hours"),
    ("/v1/admin/stats", {"hours": "many"}, "hours"),
    ("/v1/admin/stats", {"hours": "100000"}, "hours"),
    ("/v1/admin/workers", {"all": "maybe"}, "all"),
]


@pytest.mark.parametrize(("path", "query", "field"), BAD_QUERIES)
def test_bad_inputs_are_a_400_naming_the_field(
    http: FlaskClient, admin_auth: dict[str, str], path: str, query: dict[str, str], field: str
) -> None:
    response = http.get(path, query_string=query, headers=admin_auth)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["details"]["field"] == field
    assert error["message"].startswith(f"{field}:")


def test_an_unknown_or_malformed_job_id_is_a_404(
    http: FlaskClient, admin_auth: dict[str, str]
) -> None:
    for path in (f"/v1/admin/jobs/{uuid.uuid4()}", "/v1/admin/jobs/nope"):
        response = http.get(path, headers=admin_auth)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "job_not_found"
    response = http.delete(f"/v1/admin/jobs/{uuid.uuid4()}/files", headers=admin_auth)
    assert response.status_code == 404


# ---------------------------------------------------------------- statistics


def test_stats_on_a_known_set_of_jobs(session: Session) -> None:
    # A window in the past that only this test's jobs fall in.
    now = BASE_TIME - timedelta(days=400 + uuid.uuid4().int % 3000) + timedelta(minutes=30)
    hour = now.replace(minute=0)
    client = new_client(session)
    before = job_stats(session, now=now, hours=3)
    runs = [10.0, 20.0, 30.0, 40.0]
    for i, seconds in enumerate(runs):  # succeeded on w1, created 1 h 30 before now
        insert_job(
            session,
            client.id,
            hour - timedelta(hours=1),
            status=JobStatus.SUCCEEDED,
            worker="w1/1",
            started_after=float(i + 1),
            run_seconds=seconds,
        )
    insert_job(  # failed on w2, in the current hour
        session,
        client.id,
        hour,
        status=JobStatus.FAILED,
        worker="w2/2",
        started_after=2.0,
        run_seconds=5.0,
    )
    insert_job(session, client.id, hour + timedelta(minutes=1), status=JobStatus.QUEUED)
    insert_job(  # finished before the window: counted in all-time counts only
        session,
        client.id,
        hour - timedelta(hours=5),
        status=JobStatus.SUCCEEDED,
        worker="w1/1",
        started_after=1.0,
        run_seconds=1.0,
    )
    stats = job_stats(session, now=now, hours=3)
    # Jobs that finished before the previous hour are counted from a cache (5 min):
    # the old one shows once it is dropped; the rest are counted at once.
    assert stats.total - before.total == 6
    forget_cached_counts()
    stats = job_stats(session, now=now, hours=3)
    assert stats.window_start == hour - timedelta(hours=2)
    assert stats.counts["succeeded"] - before.counts["succeeded"] == 5
    assert stats.counts["failed"] - before.counts["failed"] == 1
    assert stats.counts["queued"] - before.counts["queued"] == 1
    assert stats.total - before.total == 7
    assert [(b.hour_start, b.created, b.finished) for b in stats.per_hour] == [
        (hour - timedelta(hours=2), 0, 0),
        (hour - timedelta(hours=1), 4, 4),
        (hour, 2, 1),
    ]
    assert (stats.succeeded, stats.failed, stats.canceled) == (4, 1, 0)
    assert stats.failure_rate == pytest.approx(0.2)
    # Queue waits 1, 2, 3, 4 (succeeded) and 2 (failed); runs of the succeeded ones only.
    assert stats.queue_seconds.count == 5
    assert stats.queue_seconds.p50 == pytest.approx(2.0)
    assert stats.queue_seconds.p95 == pytest.approx(3.8)
    assert stats.run_seconds.count == 4
    assert stats.run_seconds.p50 == pytest.approx(25.0)
    assert stats.run_seconds.p95 == pytest.approx(38.5)
    w1, w2 = stats.workers
    assert (w1.worker, w1.succeeded, w1.failed, w1.run_seconds.p50) == ("w1/1", 4, 0, 25.0)
    assert (w2.worker, w2.succeeded, w2.failed, w2.run_seconds.count) == ("w2/2", 0, 1, 0)


def test_stats_endpoint_shape(http: FlaskClient, admin_auth: dict[str, str]) -> None:
    response = http.get("/v1/admin/stats", query_string={"hours": "2"}, headers=admin_auth)
    assert response.status_code == 200
    stats = StatsOut.model_validate(response.json)
    assert stats.hours == 2 and len(stats.per_hour) == 2
    assert set(stats.counts) == {s.value for s in JobStatus}


# ---------------------------------------------------------------- with a worker


@pytest.fixture(scope="module")
def ctx(settings: Settings) -> Iterator[WorkerContext]:
    """An in-process worker on the API's database and data dir (checkpoints every iteration)."""
    with worker_context(
        settings.database_url, settings.data_dir, checkpoint_seconds=0.0, preview_seconds=0.0
    ) as context:
        yield context


def _detail(http: FlaskClient, admin_auth: dict[str, str], job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/admin/jobs/{job_id}", headers=admin_auth)
    assert response.status_code == 200, response.json
    AdminJobDetailOut.model_validate(response.json)
    body: dict[str, Any] = response.json
    return body


@pytest.mark.slow
def test_the_timeline_of_a_job_run_by_a_worker(
    http: FlaskClient,
    admin_auth: dict[str, str],
    submit: Any,
    ctx: WorkerContext,
    session: Session,
) -> None:
    job_id = submit(params=TINY).json["id"]
    assert run_job(ctx, uuid.UUID(job_id)) is Outcome.SUCCEEDED
    detail = _detail(http, admin_auth, job_id)
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds[:2] == ["created", "claimed"] and kinds[-1] == "succeeded"
    assert "checkpoint" in kinds
    for event in detail["events"][1:]:
        assert (event["attempt"], event["worker"]) == (1, ctx.name)
    checkpoints = [e["data"]["iteration"] for e in detail["events"] if e["kind"] == "checkpoint"]
    assert checkpoints == sorted(checkpoints) and checkpoints[-1] <= 4
    assert detail["status"] == "succeeded" and detail["worker"] == ctx.name
    assert detail["params"]["iterations"] == 4 and detail["error"] is None
    assert detail["queue_seconds"] >= 0 and detail["run_seconds"] > 0
    assert detail["files_deleted"] is False and detail["n_styles"] == 1
    # The in-process runner registered itself and counted the job.
    workers = {w.name: w for w in admin_reads.live_workers(session)}
    me = workers[ctx.name]
    assert me.alive and me.device == "cpu" and me.device_name is None
    assert me.jobs_done >= 1 and me.current_job_id is None


@pytest.mark.slow
def test_retry_of_a_failed_job_runs_it_again_to_success(
    http: FlaskClient,
    admin_auth: dict[str, str],
    submit: Any,
    ctx: WorkerContext,
    session: Session,
) -> None:
    job_id = uuid.UUID(submit(params=TINY).json["id"])
    claim = jobs.claim_job(session, job_id, worker="flaky/1", lease_seconds=30)
    assert claim is not None
    jobs.fail_job(session, claim, code="out_of_memory", message="CUDA out of memory")
    response = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
    assert response.status_code == 200, response.json
    retried = response.json
    assert retried["status"] == "queued" and retried["error"] is None
    assert retried["finished_at"] is None and retried["attempts"] == 1
    assert retried["events"][-1]["kind"] == "retried"
    data = retried["events"][-1]["data"]  # what it was, and the admin who retried it
    assert (data["status"], data["error_code"], data["by"][:6]) == (
        "failed",
        "out_of_memory",
        "admin-",
    )
    assert run_job(ctx, job_id) is Outcome.SUCCEEDED
    done = _detail(http, admin_auth, str(job_id))
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert [(e["kind"], e["attempt"]) for e in done["events"]] == [
        ("created", 0),
        ("claimed", 1),
        ("failed", 1),
        ("retried", 1),
        ("claimed", 2),
        *[("checkpoint", 2)] * (len(done["events"]) - 6),
        ("succeeded", 2),
    ]
    assert done["events"][2]["worker"] == "flaky/1" and done["events"][4]["worker"] == ctx.name
    # A succeeded (or queued) job is not retried.
    again = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "job_not_retryable"


@pytest.mark.slow
def test_a_retried_job_gets_a_fresh_attempt_budget(
    http: FlaskClient,
    admin_auth: dict[str, str],
    submit: Any,
    ctx: WorkerContext,
    session: Session,
) -> None:
    # Three attempts that failed, each retried by an admin: the next claim must run
    # it (STYLEQUEUE_MAX_ATTEMPTS counts dead workers since the last retry only).
    assert ctx.settings.max_attempts == 3
    job_id = uuid.UUID(submit(params=TINY).json["id"])
    for attempt in (1, 2, 3):
        claim = jobs.claim_job(session, job_id, worker="flaky/1", lease_seconds=30)
        assert claim is not None and claim.attempt == attempt
        jobs.fail_job(session, claim, code="out_of_memory", message="CUDA out of memory")
        response = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
        assert response.status_code == 200, response.json
    assert run_job(ctx, job_id) is Outcome.SUCCEEDED
    assert _detail(http, admin_auth, str(job_id))["attempts"] == 4


def test_cancel_any_clients_job_then_retry_it(
    http: FlaskClient, admin_auth: dict[str, str], submit: Any
) -> None:
    job_id = submit(params=TINY).json["id"]
    queued = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
    assert queued.status_code == 409 and queued.json["error"]["details"]["status"] == "queued"
    canceled = http.post(f"/v1/admin/jobs/{job_id}/cancel", headers=admin_auth)
    assert canceled.status_code == 200
    assert canceled.json["status"] == "canceled"
    assert canceled.json["events"][-1]["kind"] == "canceled"
    again = http.post(f"/v1/admin/jobs/{job_id}/cancel", headers=admin_auth)  # idempotent
    assert again.status_code == 200 and len(again.json["events"]) == len(canceled.json["events"])
    retried = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
    assert retried.status_code == 200 and retried.json["status"] == "queued"
    # The event keeps what the job was and names the admin who retried it.
    data = retried.json["events"][-1]["data"]
    assert data["status"] == "canceled" and data["by"].startswith("admin-")
    assert set(data) == {"status", "by", "admin_client_id"}


def test_cancel_of_a_running_job_asks_its_worker_to_stop(
    http: FlaskClient, admin_auth: dict[str, str], submit: Any, session: Session
) -> None:
    job_id = uuid.UUID(submit(params=TINY).json["id"])
    claim = jobs.claim_job(session, job_id, worker="busy/1", lease_seconds=30)
    assert claim is not None
    response = http.post(f"/v1/admin/jobs/{job_id}/cancel", headers=admin_auth)
    assert response.status_code == 200
    assert response.json["status"] == "running" and response.json["cancel_requested"] is True
    assert leases.heartbeat(
        session, claim, iteration=1, iterations=4, eta_seconds=None, lease_seconds=30
    )


def test_delete_files_then_the_result_is_a_404(
    http: FlaskClient,
    admin_auth: dict[str, str],
    auth: dict[str, str],
    submit: Any,
    session: Session,
    settings: Settings,
    app: Flask,
) -> None:
    storage = app.extensions[EXTENSION_KEY].storage
    job_id = uuid.UUID(submit(params=TINY).json["id"])
    queued = http.delete(f"/v1/admin/jobs/{job_id}/files", headers=admin_auth)
    assert queued.status_code == 409 and queued.json["error"]["code"] == "job_not_finished"
    claim = jobs.claim_job(session, job_id, worker="w/1", lease_seconds=30)
    assert claim is not None
    running = http.delete(f"/v1/admin/jobs/{job_id}/files", headers=admin_auth)
    assert running.status_code == 409 and running.json["error"]["details"]["status"] == "running"
    storage.put(job_id, RESULT_FILE, b"\x89PNG not really")
    jobs.finish_job(session, claim)
    assert http.get(f"/v1/jobs/{job_id}/result", headers=auth).status_code == 200
    response = http.delete(f"/v1/admin/jobs/{job_id}/files", headers=admin_auth)
    assert response.status_code == 200
    assert response.json["files_deleted"] is True and response.json["status"] == "succeeded"
    assert not storage.exists(job_id, RESULT_FILE) and not storage.exists(job_id, CONTENT_FILE)
    result = http.get(f"/v1/jobs/{job_id}/result", headers=auth)
    assert result.status_code == 404 and result.json["error"]["code"] == "result_missing"
    again = http.delete(f"/v1/admin/jobs/{job_id}/files", headers=admin_auth)  # idempotent
    kinds = [e["kind"] for e in again.json["events"]]
    assert again.status_code == 200 and kinds.count("files_deleted") == 1
    # Not to be retried without its inputs.
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    job.status = JobStatus.FAILED
    session.commit()
    retry = http.post(f"/v1/admin/jobs/{job_id}/retry", headers=admin_auth)
    assert retry.status_code == 409 and retry.json["error"]["code"] == "job_files_deleted"


# ---------------------------------------------------------------- workers registry


def test_workers_alive_and_dead(
    session: Session, http: FlaskClient, admin_auth: dict[str, str]
) -> None:
    from shared import workers as registry

    now = datetime.now(UTC)
    alive, dead = f"alive-{uuid.uuid4().hex[:6]}/1", f"dead-{uuid.uuid4().hex[:6]}/2"
    gpu = registry.DeviceInfo("cuda:0", "NVIDIA H100 80GB HBM3", 85_000_000_000)
    registry.register_worker(session, name=alive, hostname="gpu-1", pid=1, device=gpu)
    registry.register_worker(
        session,
        name=dead,
        hostname="gpu-2",
        pid=2,
        device=registry.DeviceInfo("cpu"),
        now=now - timedelta(seconds=registry.ALIVE_SECONDS + 1),
    )
    job = uuid.uuid4()
    registry.job_started(session, alive, job)
    listed = {
        w["name"]: w for w in http.get("/v1/admin/workers", headers=admin_auth).json["workers"]
    }
    assert alive in listed and dead not in listed
    assert listed[alive]["current_job_id"] == str(job)
    assert listed[alive]["device_name"] == "NVIDIA H100 80GB HBM3"
    assert listed[alive]["device_memory_bytes"] == 85_000_000_000
    registry.job_ended(session, alive, succeeded=False, failed=True)
    response = http.get("/v1/admin/workers", query_string={"all": "true"}, headers=admin_auth)
    WorkerList.model_validate(response.json)
    everyone = {w["name"]: w for w in response.json["workers"]}
    assert everyone[dead]["alive"] is False and everyone[alive]["alive"] is True
    assert everyone[alive]["jobs_failed"] == 1 and everyone[alive]["current_job_id"] is None
    # A restarted process with the same name starts its row afresh.
    registry.register_worker(session, name=alive, hostname="gpu-1", pid=1, device=gpu)
    again = {w.name: w for w in admin_reads.live_workers(session)}
    assert again[alive].jobs_failed == 0


def test_a_worker_running_a_batch_lists_every_job_under_its_lease(
    session: Session, http: FlaskClient, admin_auth: dict[str, str], submit: Any
) -> None:
    from shared import workers as registry

    name = f"batch-{uuid.uuid4().hex[:6]}/1"
    registry.register_worker(
        session, name=name, hostname="b-1", pid=1, device=registry.DeviceInfo("cpu")
    )
    # Seeds of their own: identical jobs would share one run and never be claimed.
    ids = [uuid.UUID(submit(params={**TINY, "seed": 100 + i}).json["id"]) for i in range(2)]
    for job_id in ids:
        assert jobs.claim_job(session, job_id, worker=name, lease_seconds=30) is not None
    registry.job_started(session, name, ids[1])
    response = http.get("/v1/admin/workers", headers=admin_auth)
    WorkerList.model_validate(response.json)
    me = {w["name"]: w for w in response.json["workers"]}[name]
    assert me["running_job_ids"] == [str(i) for i in ids]
    assert me["current_job_id"] == str(ids[1])


@pytest.mark.slow
def test_a_real_worker_process_registers_and_counts_its_jobs(
    worker_stack: Any, image_bytes: Callable[[str], bytes]
) -> None:
    import io
    import json
    import time

    http = worker_stack.app.test_client()
    db = worker_stack.app.extensions[EXTENSION_KEY].db
    with db.session() as s:
        _, admin_key = create_client(s, "ops", is_admin=True)
        _, client_key = create_client(s, "e2e-admin")
        assert authenticate(s, admin_key).is_admin
    admin_auth = {"Authorization": f"Bearer {admin_key}"}
    response = http.post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
            "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
            "params": json.dumps(TINY),
        },
        headers={"Authorization": f"Bearer {client_key}"},
    )
    assert response.status_code == 202
    job_id = response.json["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = _detail(http, admin_auth, job_id)
        if job["status"] == "succeeded":
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded"

    def counted() -> dict[str, Any] | None:
        # The worker counts the job just after it marks it succeeded.
        listed = http.get("/v1/admin/workers", headers=admin_auth).json["workers"]
        me = {w["name"]: w for w in listed}.get(job["worker"])
        return me if me and me["jobs_done"] >= 1 and me["current_job_id"] is None else None

    me = wait_for("the worker to count its job", counted, timeout=30)
    assert me["alive"] and me["device"] == "cpu" and me["device_name"] is None
    # The row is the worker's node; its pid is the pool process that claimed the job.
    [claimed] = [e for e in job["events"] if e["kind"] == "claimed"]
    assert claimed["worker"] == job["worker"] and me["pid"] == claimed["data"]["pid"]
    listed = _list(http, admin_auth, {"worker": job["worker"], "limit": 100})
    assert job_id in [j["id"] for j in listed["jobs"]]
