"""Flower pointed at the broker sees a task that a real worker ran (docs/admin.md, "Flower").

Flower is started the way docs/admin.md says (``celery -A worker.celery_worker
flower`` with the deployment's STYLEQUEUE_* variables, so it uses the same Redis
key prefix); the worker is started as in production, ``stylequeue worker``
without ``--events``: Flower turns task events on by itself, through Celery's
remote control. (A worker run with ``--without-heartbeat --without-gossip``,
as the other tests do, has no event dispatcher to turn on: it needs ``--events``.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import free_port, required, stop_process_group

from api import create_app
from api.services import EXTENSION_KEY
from shared.auth import create_client
from shared.settings import Settings

FLOWER_READY_SECONDS = 60.0
WORKER_READY_SECONDS = 90.0  # a cold start loads VGG19 on a busy CPU
EVENTS_ENABLED = "enabled by remote"  # the worker's log line when Flower turns events on

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


def test_flower_lists_a_task_run_by_a_real_worker(
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
    stylequeue_env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}flower:",  # this worker's queue alone
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
    }
    env = {**os.environ, **stylequeue_env}
    port = free_port()
    # The production worker command line, with no --events: Flower turns events on itself.
    worker_log, flower_log = tmp_path / "worker.log", tmp_path / "flower.log"
    worker = _start([str(Path(sys.executable).with_name("stylequeue")), "worker"], env, worker_log)
    flower_argv = [sys.executable, "-m", "celery", "-A", "worker.celery_worker", "flower"]
    flower_argv += ["--address=127.0.0.1", f"--port={port}"]
    flower = _start(flower_argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"}, flower_log)
    base = f"http://127.0.0.1:{port}"
    app = create_app(Settings.from_env(stylequeue_env))
    try:
        _wait(
            f"Flower to answer (log: {flower_log})",
            lambda: httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200,
            FLOWER_READY_SECONDS,
        )
        _wait(
            f"the worker to receive Flower's enable_events (log: {worker_log})",
            lambda: EVENTS_ENABLED in worker_log.read_text(errors="replace"),
            WORKER_READY_SECONDS,
        )
        with app.extensions[EXTENSION_KEY].db.session() as session:
            _, key = create_client(session, "flower-test")
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
        job_id = response.json["id"]

        def task_of_job() -> dict[str, Any] | None:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            for task in tasks.values():
                if job_id in (task.get("args") or "") and task.get("state") == "SUCCESS":
                    found: dict[str, Any] = task
                    return found
            return None

        task = _wait("Flower to list the job's task as SUCCESS", task_of_job, 120)
        assert task["name"] == "stylequeue.run_job"
        assert task["worker"].startswith("celery@")
    finally:
        app.extensions[EXTENSION_KEY].db.dispose()
        stop_process_group(flower)
        stop_process_group(worker)
