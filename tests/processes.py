"""Stopping the real worker processes that tests start (imported by fixtures, not a fixture)."""

from __future__ import annotations

import os
import signal
import subprocess


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
