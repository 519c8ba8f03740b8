"""The result cache through real processes: two API servers (``stylequeue api``, gunicorn),
one with STYLEQUEUE_CACHE_SCOPE=client and one with global, over HTTP, and the session's
real Celery worker, on PostgreSQL and on SQLite.

An exact repeat of a succeeded job is succeeded at once, ``cached``, with the same result
bytes, and no worker claims it; ``cache=false``, another parameter or another style byte
is computed; another client's repeat is served only under ``global``; a repeat whose
earlier job's files are gone is computed; a bad ``cache`` value stores nothing.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_process import ApiProcess
from PIL import Image
from processes import free_port
from sqlalchemy import func, select

from shared.auth import create_client
from shared.db import Database
from shared.models import Job, JobEvent
from shared.storage import LocalStorage, committed_result

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent.parent / "data"
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()
JOB_SECONDS = 120.0
FINAL = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Stack:
    own: ApiProcess  # STYLEQUEUE_CACHE_SCOPE=client
    shared: ApiProcess  # STYLEQUEUE_CACHE_SCOPE=global
    db: Database
    data_dir: Path


@pytest.fixture(scope="module")
def stack(worker_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two API servers on the worker's database, Redis key space and data dir."""
    settings = worker_stack.settings
    env = {
        "STYLEQUEUE_DATABASE_URL": settings.database_url,
        "STYLEQUEUE_REDIS_URL": settings.redis_url,
        "STYLEQUEUE_REDIS_PREFIX": settings.redis_prefix,
        "STYLEQUEUE_DATA_DIR": str(settings.data_dir),
        "STYLEQUEUE_RATE_LIMIT": "0",
        "STYLEQUEUE_MAX_QUEUED": "0",
        "STYLEQUEUE_MAX_RUNNING": "0",
    }
    logs = tmp_path_factory.mktemp("cache-api-logs")
    own = ApiProcess({**env, "STYLEQUEUE_CACHE_SCOPE": "client"}, free_port(), logs / "own.log")
    shared = ApiProcess(
        {**env, "STYLEQUEUE_CACHE_SCOPE": "global"}, free_port(), logs / "shared.log"
    )
    db = Database(settings.database_url)
    try:
        own.start()
        shared.start()
        own.wait_ready()
        shared.wait_ready()
        yield Stack(own, shared, db, settings.data_dir)
    finally:
        own.stop()
        shared.stop()
        db.dispose()


def _key(stack: Stack, *, admin: bool = False) -> str:
    with stack.db.session() as session:
        _, key = create_client(session, f"cache-{secrets.token_hex(3)}", is_admin=admin)
    return key


def _params(seed: int, **more: Any) -> dict[str, Any]:
    # A seed of each test's own: no test's jobs are a repeat of another's.
    return {"size": 32, "iterations": 2, "scales": 1, "seed": seed, **more}


def _submit(
    api: ApiProcess,
    key: str,
    params: dict[str, Any],
    *,
    style: bytes = STYLE,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/v1/jobs",
        files=[
            ("content", ("content.png", CONTENT, "image/png")),
            ("style", ("style.png", style, "image/png")),
        ],
        data={"params": json.dumps(params), **(fields or {})},
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=30.0,
    )


def _accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def _finished(api: ApiProcess, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(
            f"{api.base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish in {JOB_SECONDS:g} s: {job}")


def _computed(api: ApiProcess, key: str, params: dict[str, Any], **submit: Any) -> dict[str, Any]:
    """Submit a job that must miss the cache, and wait until a worker has computed it."""
    job = _accepted(_submit(api, key, params, **submit))
    assert job["status"] == "queued" and job["cached"] is False, job
    done = _finished(api, key, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert done["cached"] is False
    return done


def _result(api: ApiProcess, key: str, job_id: str) -> bytes:
    response = httpx.get(
        f"{api.base_url}/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.content


def _events(stack: Stack, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with stack.db.session() as session:
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == uuid.UUID(job_id))
            .order_by(JobEvent.at, JobEvent.id)
        )
        return [(row.kind, dict(row.data or {})) for row in rows]


def _row(stack: Stack, job_id: str) -> Job:
    with stack.db.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        session.expunge(job)
        return job


def _assert_served_from(stack: Stack, job: dict[str, Any], source: str) -> None:
    assert job["status"] == "succeeded" and job["cached"] is True, job
    assert job["attempts"] == 0 and job["worker"] is None
    assert job["progress"]["percent"] == 100.0
    assert _events(stack, job["id"]) == [("created", {}), ("succeeded", {"cached_from": source})]
    row = _row(stack, job["id"])
    assert row.cached is True and str(row.cached_from) == source


def _admin_sees_the_source(stack: Stack, job_id: str, source: str) -> None:
    """The admin JSON names the source job, and /admin's job page says "from cache (job X)"."""
    admin = _key(stack, admin=True)
    detail = httpx.get(
        f"{stack.own.base_url}/v1/admin/jobs/{job_id}",
        headers={"Authorization": f"Bearer {admin}"},
    ).json()
    assert detail["cached"] is True and detail["cached_from"] == source, detail
    csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
    with httpx.Client(base_url=stack.own.base_url) as browser:
        login = browser.get("/admin/login").text
        token = csrf.search(login)
        assert token is not None
        answer = browser.post(
            "/admin/login", data={"key": admin, "csrf_token": token.group(1), "next": "/admin"}
        )
        assert answer.status_code == 303, answer.text
        page = browser.get(f"/admin/jobs/{job_id}").text
    shown = re.search(r'data-role="cached-from">(.*?)</dd>', page)
    assert shown is not None, page[-2000:]
    assert re.sub(r"<[^>]+>", "", shown.group(1)) == f"from cache (job {source})"


def _other_style() -> bytes:
    """The style with one pixel changed: other bytes, the same size and format."""
    image = Image.open(io.BytesIO(STYLE)).convert("RGB")
    r, g, b = image.getpixel((0, 0))  # type: ignore[misc]
    image.putpixel((0, 0), ((r + 1) % 256, g, b))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_an_exact_repeat_is_succeeded_at_once_and_anything_else_is_computed(
    stack: Stack,
) -> None:
    key = _key(stack)
    params = _params(101)
    first = _computed(stack.own, key, params)
    first_result = _result(stack.own, key, first["id"])

    # The same bytes and parameters, the defaults spelt out and in another order.
    spelt_out = {"optimizer": "lbfgs", **dict(reversed(list(params.items())))}
    repeat = _accepted(_submit(stack.own, key, spelt_out))
    _assert_served_from(stack, repeat, first["id"])
    assert _finished(stack.own, key, repeat["id"])["cached"] is True
    assert _result(stack.own, key, repeat["id"]) == first_result
    # A copy among its own files, not a reference to the first job's.
    own_copy = (
        stack.data_dir
        / "jobs"
        / repeat["id"]
        / committed_result(_row(stack, repeat["id"]).result_file)
    )
    assert own_copy.read_bytes() == first_result

    again = _computed(stack.own, key, params, fields={"cache": "false"})
    assert "claimed" in [kind for kind, _ in _events(stack, again["id"])]
    _computed(stack.own, key, _params(101, tv_weight=0.2))
    _computed(stack.own, key, params, style=_other_style())


def test_another_clients_repeat_is_served_only_under_the_global_scope(stack: Stack) -> None:
    first_key, second_key = _key(stack), _key(stack)
    params = _params(202)
    first = _computed(stack.own, first_key, params)

    shared = _accepted(_submit(stack.shared, second_key, params))
    _assert_served_from(stack, shared, first["id"])
    _admin_sees_the_source(stack, shared["id"], first["id"])
    assert _result(stack.shared, second_key, shared["id"]) == _result(
        stack.own, first_key, first["id"]
    )
    # Under the client scope, another client's job is never looked at.
    _computed(stack.own, _key(stack), params)


def test_a_repeat_whose_earlier_result_is_gone_is_computed(stack: Stack) -> None:
    key, admin = _key(stack), _key(stack, admin=True)
    # Deleted by an admin (as retention does: the files go, a files_deleted event stays).
    deleted = _computed(stack.own, key, _params(303))
    answer = httpx.delete(
        f"{stack.own.base_url}/v1/admin/jobs/{deleted['id']}/files",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert answer.status_code == 200, answer.text
    recomputed = _computed(stack.own, key, _params(303))
    assert _result(stack.own, key, recomputed["id"])

    # Gone from the store with nobody's word for it.
    lost = _computed(stack.own, key, _params(304))
    LocalStorage(stack.data_dir).delete(
        uuid.UUID(lost["id"]), committed_result(_row(stack, lost["id"]).result_file)
    )
    _computed(stack.own, key, _params(304))


def test_an_idempotency_key_replays_a_job_served_from_the_cache(stack: Stack) -> None:
    key = _key(stack)
    first = _computed(stack.own, key, _params(404))
    headers = {"Idempotency-Key": f"cache-{secrets.token_hex(4)}"}
    cached = _accepted(_submit(stack.own, key, _params(404), headers=headers))
    _assert_served_from(stack, cached, first["id"])
    replay = _submit(stack.own, key, _params(404), headers=headers)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == cached["id"] and replay.json()["cached"] is True


@pytest.mark.parametrize(
    "fields",
    [{"cache": "maybe"}, {"cache": ""}, {"cache": "1"}],
    ids=["word", "empty", "number"],
)
def test_a_bad_cache_value_is_a_400_naming_the_field_and_stores_nothing(
    stack: Stack, fields: dict[str, str]
) -> None:
    key = _key(stack)
    _computed(stack.own, key, _params(505))  # a repeat would be served: the field decides
    jobs_dir = stack.data_dir / "jobs"

    def stored() -> tuple[int, int]:
        with stack.db.session() as session:
            rows = session.scalar(select(func.count()).select_from(Job))
        return int(rows or 0), len(list(jobs_dir.iterdir()))

    before = stored()
    answer = _submit(stack.own, key, _params(505), fields=fields)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_cache" and error["details"]["field"] == "cache"
    assert "cache" in error["message"]
    assert stored() == before
