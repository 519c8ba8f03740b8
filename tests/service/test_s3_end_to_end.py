"""Job files in an object store, end to end: a real S3-speaking server process (moto_server
over loopback), ``stylequeue api`` (gunicorn), a real Celery worker and the scheduler, each
with a data dir of its own, so that nothing but the store can carry a file between them.

A 202 means the inputs are in the store; the worker reads them from there and writes its
checkpoints, previews and result there; the API streams the result (or, with
STYLEQUEUE_STORAGE_REDIRECT=true, answers 303 to a presigned URL); retention deletes the
objects.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_process import ApiProcess
from fault_helpers import WorkerProcess
from processes import free_port, stop_process_group
from service_helpers import DATA, wait_for
from sqlalchemy import select

from cli.server_cmds import scheduler_argv
from shared.auth import create_client
from shared.db import Database
from shared.models import JobEvent
from shared.settings import Settings
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow

CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()
RETENTION_SECONDS = 8
PARAMS = '{"size": 32, "iterations": 30, "scales": 1}'


class Stack:
    def __init__(self, env: dict[str, str], tmp: Path, s3: S3Server) -> None:
        self.env = env
        self.tmp = tmp
        self.s3 = s3
        self.prefix = env["STYLEQUEUE_STORAGE_URL"].split("/", 3)[3]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.apis: list[ApiProcess] = []
        self.worker: WorkerProcess | None = None
        db = Database(env["STYLEQUEUE_DATABASE_URL"])
        with db.session() as session:
            _, key = create_client(session, "s3-end-to-end")
        db.dispose()
        self.headers = {"Authorization": f"Bearer {key}"}

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def start_api(self, **extra: str) -> ApiProcess:
        name = f"api{len(self.apis)}"
        env = {**self.env, "STYLEQUEUE_DATA_DIR": str(self.dir(name)), **extra}
        api = ApiProcess(env, free_port(), self.tmp / f"{name}.log")
        api.start()
        api.wait_ready()
        self.apis.append(api)
        return api

    def start_scheduler(self) -> None:
        env = {**self.env, "STYLEQUEUE_DATA_DIR": str(self.dir("scheduler"))}
        env["STYLEQUEUE_RETENTION_SECONDS"] = str(RETENTION_SECONDS)
        with (self.tmp / "scheduler.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    scheduler_argv(Settings.from_env(env)),
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def start_worker(self) -> None:
        env = {**self.env, "STYLEQUEUE_DATA_DIR": str(self.dir("worker"))}
        self.worker = WorkerProcess(env, self.tmp / "worker.log", "s3worker")

    def keys(self, job_id: uuid.UUID) -> list[str]:
        prefix = f"{self.prefix}/jobs/{job_id}/"
        return [key.removeprefix(prefix) for key in self.s3.keys(prefix)]

    def submit(self, api: ApiProcess) -> uuid.UUID:
        response = httpx.post(
            f"{api.base_url}/v1/jobs",
            headers=self.headers,
            files={"content": ("c.png", CONTENT), "style": ("s.png", STYLE)},
            # Computed, never a copy of an earlier job: the workers are what is tested.
            data={"params": PARAMS, "cache": "false"},
            timeout=30.0,
        )
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    def job(self, api: ApiProcess, job_id: uuid.UUID) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(
            f"{api.base_url}/v1/jobs/{job_id}", headers=self.headers, timeout=30.0
        ).json()
        return body

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for api in self.apis:
            api.stop()
        for process in self.processes:
            stop_process_group(process)


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("s3e2e")
    s3 = S3Server.start(tmp)
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}s3e2e:",
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_PREVIEW_SECONDS": "0.2",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "0.3",
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
        **s3.env(prefix="deployment-1"),
    }
    running = Stack(env, tmp, s3)
    try:
        running.start_scheduler()
        running.start_worker()
        running.start_api()
        yield running
    finally:
        running.close()
        s3.stop()


def run_to_success(stack: Stack, api: ApiProcess) -> uuid.UUID:
    job_id = stack.submit(api)
    # The 202 came after the inputs reached the store.
    assert stack.keys(job_id) == ["content.png", "style-0.png"]
    wait_for(
        "the job to succeed",
        lambda: stack.job(api, job_id)["status"] in {"succeeded", "failed", "canceled"},
        timeout=120,
    )
    assert stack.job(api, job_id)["status"] == "succeeded", stack.job(api, job_id)
    return job_id


def test_a_job_runs_with_its_files_only_in_the_store(stack: Stack) -> None:
    api = stack.apis[0]
    job_id = run_to_success(stack, api)
    keys = stack.keys(job_id)
    assert "result.a1.png" in keys
    assert not [k for k in keys if "checkpoint" in k], "a finished job keeps no checkpoint"
    result = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/result", headers=stack.headers)
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    stored = stack.s3.client().get_object(
        Bucket=stack.s3.bucket, Key=f"{stack.prefix}/jobs/{job_id}/result.a1.png"
    )
    assert result.content == stored["Body"].read()
    assert result.content.startswith(b"\x89PNG")
    preview = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/preview", headers=stack.headers)
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    # Every process has its own data dir, and none of them holds a job file.
    for name in ("api0", "worker", "scheduler"):
        assert not (stack.tmp / name / "jobs").exists(), name
    # Checkpoints were committed on the way (in the store: no process has the files),
    # and removed with the success.
    db = Database(stack.env["STYLEQUEUE_DATABASE_URL"])
    with db.session() as session:
        kinds = set(session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)))
    db.dispose()
    assert {"claimed", "checkpoint", "succeeded"} <= kinds, kinds


def test_with_redirect_the_api_sends_the_client_to_a_presigned_url(stack: Stack) -> None:
    api = stack.start_api(STYLEQUEUE_STORAGE_REDIRECT="true")
    job_id = run_to_success(stack, api)
    answer = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/result", headers=stack.headers)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(stack.s3.endpoint) and "Signature" in location
    fetched = httpx.get(location)  # no credentials of ours: the URL carries its signature
    streamed = httpx.get(f"{stack.apis[0].base_url}/v1/jobs/{job_id}/result", headers=stack.headers)
    assert fetched.status_code == 200 and fetched.content == streamed.content
    # A file that is not there is still the API's own 404, never a redirect to nothing.
    missing = httpx.get(f"{api.base_url}/v1/jobs/{uuid.uuid4()}/result", headers=stack.headers)
    assert missing.status_code == 404


def test_retention_deletes_the_objects(stack: Stack) -> None:
    api = stack.apis[0]
    job_id = run_to_success(stack, api)
    assert stack.keys(job_id)
    wait_for(
        "retention to delete the job's objects",
        lambda: stack.keys(job_id) == [],
        timeout=RETENTION_SECONDS + 60,
    )
    gone = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/result", headers=stack.headers)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "result_missing"


def test_a_repeat_copies_the_result_in_the_store_and_is_computed_once_retention_took_it(
    stack: Stack,
) -> None:
    api = stack.apis[0]
    first = run_to_success(stack, api)

    def repeat() -> dict[str, Any]:
        answer = httpx.post(
            f"{api.base_url}/v1/jobs",
            headers=stack.headers,
            files={"content": ("c.png", CONTENT), "style": ("s.png", STYLE)},
            data={"params": PARAMS},
            timeout=30.0,
        )
        assert answer.status_code == 202, answer.text
        body: dict[str, Any] = answer.json()
        return body

    cached = repeat()
    assert cached["status"] == "succeeded" and cached["cached"] is True, cached
    copy = uuid.UUID(cached["id"])
    # Its own objects: the inputs and a copy of the result, under its own prefix.
    assert stack.keys(copy) == ["content.png", "result.a0.png", "style-0.png"]
    results = [
        httpx.get(f"{api.base_url}/v1/jobs/{job_id}/result", headers=stack.headers).content
        for job_id in (first, copy)
    ]
    assert results[0] == results[1] and results[0].startswith(b"\x89PNG")
    # Once retention has removed both, a repeat is computed again, never a 404.
    wait_for(
        "retention to delete both jobs' objects",
        lambda: stack.keys(first) == [] and stack.keys(copy) == [],
        timeout=RETENTION_SECONDS + 60,
    )
    again = repeat()
    assert again["status"] == "queued" and again["cached"] is False, again
    job_id = uuid.UUID(again["id"])
    wait_for(
        "the repeat to be computed",
        lambda: stack.job(api, job_id)["status"] in {"succeeded", "failed", "canceled"},
        timeout=120,
    )
    done = stack.job(api, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and not done["cached"], done
