"""Helpers shared by the service tests that run the worker (imported, not fixtures)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from shared import submissions
from shared.params import parse_params
from shared.settings import Settings
from shared.storage import LocalStorage
from worker.context import WorkerContext, make_context


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


DATA = Path(__file__).parent.parent / "data"


def store_job(
    session: Session,
    storage: LocalStorage,
    client_id: int,
    *,
    iterations: int,
    size: int = 32,
    enqueue: Callable[[uuid.UUID], None] = lambda _job_id: None,
) -> uuid.UUID:
    """A job of tubingen in the style of starry_night (64 px samples), stored as the API
    would store it, one scale; by default not sent to any broker."""
    job, _ = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": size, "iterations": iterations, "scales": 1}),
        content=(DATA / "tubingen.png").read_bytes(),
        styles=[(DATA / "starry_night.png").read_bytes()],
        idempotency_key=None,
        enqueue=enqueue,
    )
    return job.id
