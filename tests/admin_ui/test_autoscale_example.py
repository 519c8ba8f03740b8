"""examples/autoscale.py against a real API: ``stylequeue api`` (gunicorn) on a free port,
its own PostgreSQL database holding a known backlog, STYLEQUEUE_METRICS_KEY set.

The script runs in dry-run mode, once per case, and prints the number of workers it
would set; once for real, with a stand-in ``docker`` first on PATH that records the
command it was given (there is no Docker daemon here). The real response's
Content-Type is checked on the way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from backlog_rows import add_history, add_queue, add_running, add_workers
from own_databases import own_postgresql_database
from processes import free_port, stop_process_group

from shared.db import Database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autoscale.py"
METRICS_KEY = "scrape-" + secrets.token_hex(8)
API_READY_SECONDS = 60.0

pytestmark = pytest.mark.slow


@pytest.fixture
def api(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[str, Database]]:
    """``stylequeue api`` on a database of its own; yields (its /metrics URL, the database)."""
    with own_postgresql_database(
        postgresql_url, f"sq_test_autoscale_{secrets.token_hex(4)}"
    ) as url:
        env = {
            **os.environ,
            "STYLEQUEUE_DATABASE_URL": url,
            "STYLEQUEUE_REDIS_URL": redis_url,
            "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}autoscale:",
            "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
            "STYLEQUEUE_METRICS_KEY": METRICS_KEY,
        }
        port = free_port()
        log_path = tmp_path / "api.log"
        command = str(Path(sys.executable).with_name("stylequeue"))
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [command, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        db = Database(url)
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
            yield f"{base}/metrics", db
        finally:
            db.dispose()
            stop_process_group(process)


def autoscale(
    url: str, *args: str, key: str | None = METRICS_KEY, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One reading in dry-run; with ``path``, for real, that directory first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "STYLEQUEUE_METRICS_KEY"}
    if key is not None:
        env["STYLEQUEUE_METRICS_KEY"] = key
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    dry_run = [] if path is not None else ["--dry-run"]
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", url, "--once", *dry_run, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_example_loop_prints_the_workers_the_backlog_wants(
    api: tuple[str, Database], tmp_path: Path
) -> None:
    url, db = api
    # 145 s queued and 105 s running: 250 s; two live workers, both busy.
    add_history(db)
    add_queue(db)
    add_running(db)
    add_workers(db, live=2, busy=2)

    answer = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"

    cases = {
        ("--target-seconds", "100", "--max", "8"): 3,  # ceil(250 / 100)
        ("--target-seconds", "1000", "--max", "8"): 2,  # ceil(0.25) = 1, but two are busy
        ("--target-seconds", "10", "--max", "2"): 2,  # 25 wanted, two GPUs
        ("--target-seconds", "1000", "--max", "8", "--min", "4"): 4,
    }
    for args, workers in cases.items():
        run = autoscale(url, *args)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == (
            f"backlog 250 s, 2 live workers (2 busy): worker={workers} (dry run)"
        ), args

    # Without --dry-run it calls `docker compose` (here a stand-in that records its arguments).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "docker-args"
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {called}\n')
    docker.chmod(0o755)
    applied = autoscale(url, "--target-seconds", "100", "--max", "8", path=bin_dir)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "backlog 250 s, 2 live workers (2 busy): worker=3"
    assert called.read_text().split() == [
        *("compose", "up", "--detach", "--no-deps", "--no-recreate"),
        *("--scale", "worker=3", "worker"),
    ]

    refused = autoscale(url, "--max", "8", key=None)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "left as they are" in refused.stderr


def test_the_loop_scales_up_at_once_and_down_after_the_window() -> None:
    spec = importlib.util.spec_from_file_location("autoscale", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    scaler = example.Scaler(down_after=300)
    steps = [(0, 2, 2), (10, 5, 5), (20, 1, 5), (200, 3, 5), (311, 1, 3), (501, 1, 1), (502, 4, 4)]
    for now, want, applied in steps:
        got = scaler.decide(want, now)
        assert got == applied, (now, want)
        scaler.current = got
