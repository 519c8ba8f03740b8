"""Several real `celery worker` processes on one Redis key space, one database, one data dir.

``start_pool`` starts n workers at once (each loads VGG19 in its own process; started
together the loads overlap) and waits until every one is ready; ``stop_pool`` stops
them. Each logs JSON lines (STYLEQUEUE_LOG_FORMAT=json) to a file of its own.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import stop_process_group

from cli.server_cmds import worker_argv
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 120.0  # n cold starts share two busy cores
READY_MARKERS = ("ready.", "loaded caffe VGG19")  # the Celery parent's and the child's


@dataclass(frozen=True)
class PoolWorker:
    """One running worker: its Celery node name, its process and its log (stderr, JSON lines)."""

    node: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass(frozen=True)
class WorkerPool:
    settings: Settings
    workers: list[PoolWorker]


StartPool = Callable[[int], WorkerPool]


def start_pool(n: int, *, env: dict[str, str], node_prefix: str, log_dir: Path) -> WorkerPool:
    """n workers with ``env`` (STYLEQUEUE_* variables), ready to take jobs."""
    env = {**env, "STYLEQUEUE_LOG_FORMAT": "json"}
    workers = []
    for i in range(n):
        node = f"{node_prefix}{i}@%h"
        log_path = log_dir / f"worker{i}.jsonl"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                _worker_argv(node),
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,  # Celery's banner; the log lines go to stderr
                stderr=log,
                cwd=ROOT,
                start_new_session=True,  # so that stopping it stops its child too
            )
        workers.append(PoolWorker(node, process, log_path))
    try:
        _wait_until_ready(workers)
    except BaseException:
        stop_pool(workers)
        raise
    return WorkerPool(Settings.from_env(env), workers)


def stop_pool(workers: list[PoolWorker]) -> None:
    for worker in workers:
        stop_process_group(worker.process)


def _worker_argv(node: str) -> list[str]:
    return worker_argv(hostname=node, quiet=True)


def _wait_until_ready(workers: list[PoolWorker]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    waiting = list(workers)
    while waiting and time.monotonic() < deadline:
        for worker in list(waiting):
            text = worker.log_path.read_text(errors="replace")
            if all(marker in text for marker in READY_MARKERS):
                waiting.remove(worker)
            elif worker.process.poll() is not None:
                pytest.fail(f"worker {worker.node} exited:\n{text[-3000:]}")
        time.sleep(0.2)
    if waiting:
        tails = "\n".join(f"{w.node}:\n{w.log_path.read_text()[-1500:]}" for w in waiting)
        pytest.fail(f"not ready in {READY_TIMEOUT_SECONDS:.0f} s:\n{tails}")
