"""Per-client limits through real API processes (``stylequeue api``: gunicorn, 2 processes
each) on PostgreSQL and Redis: the submit rate holds for the sum over two API servers,
and ``stylequeue submit`` waits out a 429 and succeeds."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_process import ApiProcess
from limits_helpers import DATA, TINY, limited_env
from processes import free_port

from shared.auth import create_client
from shared.db import Database

pytestmark = pytest.mark.slow

RATE, BURST = 2.0, 4
LOAD_SECONDS = 3.0


@pytest.fixture(scope="module")
def apis(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, ApiProcess, Database]]:
    """Two API servers on one database, Redis key space and data dir."""
    data_dir = tmp_path_factory.mktemp("limits-apis")
    env = limited_env(postgresql_url, redis_url, f"{redis_prefix}limits-apis:", data_dir / "data")
    logs = tmp_path_factory.mktemp("limits-api-logs")
    servers = [ApiProcess(env, free_port(), logs / f"api{i}.log") for i in range(2)]
    database = Database(postgresql_url)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1], database
    finally:
        for server in servers:
            server.stop()
        database.dispose()


def _client(database: Database, **columns: float | int) -> str:
    with database.session() as session:
        client, key = create_client(session, f"procs-{secrets.token_hex(3)}")
        for column, value in columns.items():
            setattr(client, column, value)
        session.commit()
    return key


def _files() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("content", ("content.png", (DATA / "tubingen.png").read_bytes(), "image/png")),
        ("style", ("style.png", (DATA / "starry_night.png").read_bytes(), "image/png")),
    ]


def test_the_submit_rate_holds_across_two_api_servers(
    apis: tuple[ApiProcess, ApiProcess, Database],
) -> None:
    first, second, database = apis
    key = _client(database, rate_limit=RATE, rate_burst=BURST, max_queued=0)
    statuses: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + LOAD_SECONDS

    def load(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=10.0) as http:
            while time.monotonic() < stop_at:
                answer = http.post(
                    "/v1/jobs",
                    files=_files(),
                    data={"params": '{"size": 32, "iterations": 2, "scales": 1}'},
                    headers={"Authorization": f"Bearer {key}"},
                )
                with lock:
                    statuses.append((base_url, answer.status_code))

    started = time.monotonic()
    threads = [
        threading.Thread(target=load, args=(server.base_url,))
        for server in (first, second, first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    accepted = [url for url, status in statuses if status == 202]
    assert {status for _, status in statuses} <= {202, 429}, statuses
    # Without one bucket for both servers (and their four processes) this would be
    # several bursts over; GCRA allows exactly the burst plus the rate times the time.
    assert len(accepted) <= BURST + RATE * elapsed + 1, (len(accepted), elapsed, statuses)
    assert len(accepted) >= BURST, statuses
    assert len(statuses) > len(accepted), "no submit was refused: the load was too light"
    assert {first.base_url, second.base_url} <= {url for url, _ in statuses}


def test_stylequeue_submit_waits_out_a_429_and_succeeds(
    apis: tuple[ApiProcess, ApiProcess, Database], tmp_path: Path
) -> None:
    first, _, database = apis
    key = _client(database, rate_limit=0.5, rate_burst=1, max_queued=0)
    command = str(Path(sys.executable).with_name("stylequeue"))
    env = {**os.environ, "STYLEQUEUE_URL": first.base_url, "STYLEQUEUE_API_KEY": key}
    argv = [command, "submit", str(DATA / "tubingen.png"), str(DATA / "starry_night.png")]
    argv += [f"--param={name}={value}" for name, value in TINY.items()]
    done = [subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)]
    started = time.monotonic()
    done.append(subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60))
    waited = time.monotonic() - started
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
    assert "rate_limited" not in done[0].stderr
    assert re.search(r"\(rate_limited\); retrying in [12] s", done[1].stderr), done[1].stderr
    assert waited >= 1.0  # it waited for the bucket (one submit every 2 s)
    ids = [d.stdout.strip().splitlines()[-1] for d in done]
    assert len(set(ids)) == 2
