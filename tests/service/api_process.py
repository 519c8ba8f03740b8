"""The real API process for the fault tests: ``stylequeue api`` (gunicorn, 2 processes).

Started in a process group of its own, so that a SIGKILL reaches the master
and its workers alike, as a crashed container or a killed unit would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from processes import stop_process_group

READY_SECONDS = 60.0


class ApiProcess:
    """``stylequeue api --host 127.0.0.1 --port PORT`` with ``env``; its output goes to ``log_path``."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the process (do not wait): call ``wait_ready`` next."""
        command = str(Path(sys.executable).with_name("stylequeue"))
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [command, "api", "--host", "127.0.0.1", "--port", str(self.port)],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def wait_ready(self) -> float:
        """Wait until /healthz answers 200; returns the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        deadline = started + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited early:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"the API was not ready in {READY_SECONDS:g} s:\n{self.log()[-3000:]}")

    def signal(self, sig: signal.Signals, *, group: bool) -> None:
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
