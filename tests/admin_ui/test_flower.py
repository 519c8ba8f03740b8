"""Flower pointed at the broker sees the tasks that real workers ran, each with its job's
outcome and the worker's own node name (docs/admin.md, "Flower").

Flower is started the way docs/admin.md says (``celery -A worker.celery_worker
flower`` with the deployment's STYLEQUEUE_* variables, so it uses the same Redis
key prefix); the worker is started as in production, ``stylequeue worker`` with
no flags: its default node name, and task events from its start. A second worker
runs with ``--no-events``: Flower turns its task events on by itself, through
Celery's remote control.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu.transport.redis import Channel as RedisChannel
from processes import free_port, required, stop_process_group
from sqlalchemy import select

from api import create_app
from api.services import EXTENSION_KEY
from shared import submissions
from shared.auth import create_client
from shared.celery_app import JOBS_QUEUE, create_celery, enqueue_job
from shared.models import JobEvent
from shared.params import parse_params
from shared.settings import Settings
from shared.storage import open_storage

FLOWER_READY_SECONDS = 60.0
WORKER_READY_SECONDS = 90.0  # a cold start loads VGG19 on a busy CPU
EVENTS_ENABLED = "enabled by remote"  # a worker's log line when Flower turns its events on

pytestmark = pytest.mark.slow


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            found = check()
            if found:
                return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
            start_new_session=True,
        )


def test_flower_lists_each_task_with_its_jobs_outcome_and_its_workers_name(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    image_bytes: Callable[[str], bytes],
) -> None:
    try:
        import flower  # noqa: F401
    except ImportError:
        required("flower is not installed (pip install -e '.[monitoring]')")
    prefix = f"{redis_prefix}flower:"  # these workers' queue alone
    stylequeue_env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": prefix,
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",  # two workers and Flower on a few cores
    }
    env = {**os.environ, **stylequeue_env}
    port = free_port()
    stylequeue = str(Path(sys.executable).with_name("stylequeue"))
    # The production worker command line, with no flags: its default name and task events.
    worker_log, quiet_log = tmp_path / "worker.log", tmp_path / "quiet.log"
    worker = _start([stylequeue, "worker"], env, worker_log)
    quiet = _start([stylequeue, "worker", "--no-events", "--name", "quiet@%h"], env, quiet_log)
    host = socket.gethostname()
    names = {f"cpu-{worker.pid}@{host}", f"quiet@{host}"}  # the stylequeue process execs Celery
    flower_log = tmp_path / "flower.log"
    flower_argv = [sys.executable, "-m", "celery", "-A", "worker.celery_worker", "flower"]
    flower_argv += ["--address=127.0.0.1", f"--port={port}"]
    flower = _start(flower_argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"}, flower_log)
    base = f"http://127.0.0.1:{port}"
    settings = Settings.from_env(stylequeue_env)
    app = create_app(settings)
    celery = create_celery(settings)
    broker = redis.Redis.from_url(redis_url)
    try:
        _wait(
            f"Flower to answer (log: {flower_log})",
            lambda: httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200,
            FLOWER_READY_SECONDS,
        )
        # Flower hears both workers' events, by their names: the default one sends them
        # from its start, the --no-events one once Flower has turned them on.
        _wait(
            f"Flower to see both workers alive (logs: {worker_log}, {quiet_log})",
            lambda: all(
                httpx.get(f"{base}/api/workers?status=1", timeout=5).json().get(n) for n in names
            ),
            WORKER_READY_SECONDS,
        )
        _wait(
            f"the --no-events worker to receive Flower's enable_events (log: {quiet_log})",
            lambda: EVENTS_ENABLED in quiet_log.read_text(errors="replace"),
            WORKER_READY_SECONDS,
        )
        assert EVENTS_ENABLED not in worker_log.read_text(errors="replace"), "on from its start"
        db = app.extensions[EXTENSION_KEY].db
        with db.session() as session:
            client, key = create_client(session, "flower-test")
        response = app.test_client().post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(image_bytes("tubingen")), "c.png"),
                "style": [(io.BytesIO(image_bytes("starry_night")), "s.png")],
                "params": json.dumps({"size": 32, "iterations": 2, "scales": 1}),
            },
            headers={"Authorization": f"Bearer {key}"},
            content_type="multipart/form-data",
        )
        assert response.status_code == 202, response.text
        succeeded = response.json["id"]
        # A job that fails: its content is no image, which only the worker finds out here
        # (the API would refuse it, so it is stored as a submit stores one, then sent).
        with db.session() as session:
            job, _ = submissions.create_job(
                session,
                open_storage(settings),
                client_id=client.id,
                params=parse_params({"size": 32, "iterations": 2, "scales": 1}),
                content=b"not an image",
                styles=[image_bytes("starry_night")],
                idempotency_key=None,
                enqueue=lambda job_id: enqueue_job(celery, job_id),
            )
        failed = str(job.id)

        def task_of(job_id: str, state: str) -> dict[str, Any] | None:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            for task in tasks.values():
                if job_id in (task.get("args") or "") and task.get("state") == state:
                    found: dict[str, Any] = task
                    return found
            return None

        ok = _wait(
            "Flower to list the job's task as SUCCESS", lambda: task_of(succeeded, "SUCCESS"), 120
        )
        bad = _wait(
            "Flower to list the failed job's task as FAILURE",
            lambda: task_of(failed, "FAILURE"),
            120,
        )
        http = app.test_client()
        auth = {"Authorization": f"Bearer {key}"}
        for task, job_id, status in ((ok, succeeded, "succeeded"), (bad, failed, "failed")):
            assert task["name"] == "stylequeue.run_job"
            body = http.get(f"/v1/jobs/{job_id}", headers=auth).json
            assert body["status"] == status
            assert task["worker"] == body["worker"] and task["worker"] in names, (task, names)
        assert "succeeded" in ok["result"]
        error = http.get(f"/v1/jobs/{failed}", headers=auth).json["error"]
        assert "JobFailedError" in bad["exception"] and error["code"] in bad["exception"]
        # Acknowledged as any outcome is: nothing left unacknowledged (kombu's hash of
        # delivered messages) or queued, and never delivered again (Flower would see the
        # task run anew and end in SUCCESS, a no-op claim); Celery did not retry it.
        unacked = f"{prefix}{RedisChannel.unacked_key}"
        _wait(
            "both messages to be acknowledged",
            lambda: broker.hlen(unacked) == 0 and broker.llen(f"{prefix}{JOBS_QUEUE}") == 0,
            30,
        )
        assert bad["retries"] == 0
        again = httpx.get(f"{base}/api/task/info/{bad['uuid']}", timeout=5).json()
        assert again["state"] == "FAILURE" and again["received"] == bad["received"]
        with db.session() as session:
            kinds = session.scalars(
                select(JobEvent.kind).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
            ).all()
        assert kinds == ["created", "claimed", "failed"], kinds
    finally:
        app.extensions[EXTENSION_KEY].db.dispose()
        celery.close()
        broker.close()
        stop_process_group(flower)
        stop_process_group(worker)
        stop_process_group(quiet)
