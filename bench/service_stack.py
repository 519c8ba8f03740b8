"""A throwaway stylequeue stack for benchmarks (used by service_http.py).

Its own PostgreSQL database (created, then dropped), its own Redis key
prefix (deleted afterwards), a temporary data dir, gunicorn serving
``api.asgi:app`` with ``api.serving``'s settings (as ``stylequeue api`` serves it) and, on
request, one real Celery worker. Everything it
starts it stops, in reverse order, even when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
READY_TIMEOUT_S = 60.0  # gunicorn boots in a few seconds; a worker loads torch and VGG19
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class GunicornConfig:
    """How gunicorn serves the API: threaded workers, so keep-alive works and DB waits overlap."""

    workers: int = 2  # one per core: the views are CPU-bound Python between short DB/Redis waits
    threads: int = 4  # overlap the PostgreSQL, Redis and fsync waits within a worker
    worker_class: str = "api.serving.Worker"  # asyncio, requests read whole (api/serving.py)
    app: str = "api.asgi:app"  # what `stylequeue api` serves: the Flask app behind its bridge
    access_log: bool = False  # off by default in `stylequeue api` too (--access-log turns it on)

    def argv(self, host: str, port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "-c", "python:api.serving",
            "-k", self.worker_class, "-w", str(self.workers),
            "--threads", str(self.threads), "-b", f"{host}:{port}", "--keep-alive", "30",
            *(["--access-logfile", "-"] if self.access_log else []), self.app,
        ]  # fmt: skip

    def describe(self) -> str:
        log = " --access-logfile -" if self.access_log else ""
        return (
            f"gunicorn -k {self.worker_class} -w {self.workers} --threads {self.threads}"
            f"{log} {self.app}"
        )


@dataclass
class Stack:
    """A running stack: where it listens, the API key to use, and its processes."""

    host: str
    port: int
    api_key: str
    env: dict[str, str]
    data_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        """One real Celery worker, concurrency 1, as production runs it (``env``: settings
        of its own on top of the stack's)."""
        log = open(self.data_dir / "worker.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes["worker"] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_worker", "worker", "-c", "1",
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        # Signal the process group: gunicorn and celery have children of their own.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_cli(args: list[str], env: dict[str, str]) -> str:
    # The console script next to this interpreter: the venv's, even if it is not activated.
    command = [str(Path(sys.executable).with_name("stylequeue")), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stylequeue {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S:g} s:\n{log.read_text()}")


@contextlib.contextmanager
def database(name: str) -> Iterator[str]:
    """A PostgreSQL database of this name for the benchmark, dropped at the end; yields its URL."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _delete_redis_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@contextlib.contextmanager
def running_stack(gunicorn: GunicornConfig) -> Iterator[Stack]:
    """Migrate a fresh database, create an API key, serve the API; clean everything up after."""
    tag = f"sqbench_{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix=f"{tag}_"))
    prefix = f"{tag}:"
    try:
        with database(tag) as database_url:
            env = {
                **os.environ,
                "STYLEQUEUE_DATABASE_URL": database_url,
                "STYLEQUEUE_REDIS_URL": REDIS_URL,
                "STYLEQUEUE_REDIS_PREFIX": prefix,
                "STYLEQUEUE_DATA_DIR": str(data_dir),
                "STYLEQUEUE_DEVICE": "cpu",
                # Limits far above any load the benchmarks make, so that every submit
                # still pays for checking them (a Redis script, a count).
                "STYLEQUEUE_RATE_LIMIT": "1000000",
                "STYLEQUEUE_RATE_BURST": "1000000",
                "STYLEQUEUE_MAX_QUEUED": "100000000",
            }
            _run_cli(["db", "upgrade"], env)
            api_key = _run_cli(["keys", "create", "bench"], env).strip().splitlines()[-1]
            stack = Stack("127.0.0.1", _free_port(), api_key, env, data_dir)
            log = data_dir / "gunicorn.log"
            with open(log, "wb") as log_file:
                stack.processes["api"] = subprocess.Popen(
                    gunicorn.argv(stack.host, stack.port), env=env, stdout=log_file,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            try:
                _wait_ready(f"{stack.base_url}/readyz", stack.processes["api"], log)
                yield stack
            finally:
                for name in list(stack.processes)[::-1]:
                    stack.stop(name)
    finally:
        _delete_redis_keys(prefix)
        shutil.rmtree(data_dir, ignore_errors=True)
