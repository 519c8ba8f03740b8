"""Helpers shared by the service tests that run the worker (imported, not fixtures)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from worker.runner import WorkerContext, make_context


def wait_for(what: str, found: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``found`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


@contextmanager
def worker_context(database_url: str, data_dir: Path, **settings: Any) -> Iterator[WorkerContext]:
    """An in-process worker context on the CPU with fast heartbeats (override any setting)."""
    context = make_context(
        Settings(
            database_url=database_url,
            data_dir=data_dir,
            device="cpu",
            **{"heartbeat_seconds": 0.05, **settings},
        )
    )
    try:
        yield context
    finally:
        context.close()
