"""Plain helpers for tests that start real processes (imported, not fixtures): stopping a
process group, a free port, and what to do when a needed program is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def stop_process_group(process: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    """Stop a worker started with its own process group, without waiting for a job.

    SIGQUIT is Celery's cold shutdown, so a test that failed mid-job does not hang
    its teardown; SIGKILL if it is still there after ``timeout`` seconds.
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGQUIT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def required(message: str) -> NoReturn:
    """Something the test needs is missing: skip it, but fail under CI=true (CI must never
    pass by skipping)."""
    if IN_CI:
        pytest.fail(message + " — required under CI=true")
    pytest.skip(message)
