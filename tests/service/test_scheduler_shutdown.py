"""The scheduler's warm shutdown (SIGTERM to its main process): it runs no job, so it asks no
process to hand one back. Its celery beat is a child process of its own, not a pool process,
and Celery stops it with the worker.

A real ``stylequeue scheduler`` process (celery beat in a solo worker), on the run's SQLite
database and its own Redis key prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import service_helpers

from cli.server_cmds import scheduler_argv
from shared.settings import Settings

READY_MARKERS = ("ready.", "beat: Starting")  # the solo worker's and its beat's
WAIT_SECONDS = 60.0


def test_the_scheduler_stopping_asks_no_pool_process_for_a_job(
    sqlite_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {
        "STYLEQUEUE_DATABASE_URL": sqlite_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}scheduler-stop:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
    }
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True)
    log_path = tmp_path / "scheduler.log"
    with log_path.open("wb") as log:
        scheduler = subprocess.Popen(
            scheduler_argv(settings),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        service_helpers.wait_for(
            "the scheduler and its beat to start",
            lambda: (
                scheduler.poll() is None
                and all(marker in log_path.read_text() for marker in READY_MARKERS)
            ),
            timeout=WAIT_SECONDS,
        )
        scheduler.send_signal(signal.SIGTERM)  # to the main process alone: a warm shutdown
        scheduler.wait(timeout=WAIT_SECONDS)
    finally:
        if scheduler.poll() is None:
            os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait()
    text = log_path.read_text()
    assert "Warm shutdown" in text or "warm shutdown" in text, text[-3000:]
    assert "pool process" not in text, text[-3000:]
    assert "hand its job back" not in text, text[-3000:]
