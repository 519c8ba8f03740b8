"""Helpers for the client tests that need a job to move: JobDriver plays the worker's part."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from flask import Flask

from api.services import EXTENSION_KEY
from shared import job_list, jobs, leases
from shared.auth import authenticate
from shared.models import JobStatus
from shared.storage import RESULT_FILE


class JobDriver:
    """Moves a job through its states the way a worker does, with shared.jobs (no engine).

    Used where a test needs a running or finished job and no Celery worker
    listens on the API tests' key space.
    """

    WORKER = "test-driver@localhost"
    LEASE_S = 30.0

    def __init__(self, app: Flask) -> None:
        self._services = app.extensions[EXTENSION_KEY]

    def client_id(self, api_key: str) -> int:
        with self._services.db.session() as session:
            return authenticate(session, api_key).client_id

    def newest_queued_job(self, client_id: int, timeout_s: float = 10.0) -> uuid.UUID:
        """Wait for the client's newest queued job to appear (a CLI submit in flight)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._services.db.session() as session:
                page = job_list.list_jobs(
                    session, client_id=client_id, status=JobStatus.QUEUED, limit=1, cursor=None
                )
            if page.jobs:
                return page.jobs[0].id
            time.sleep(0.02)
        raise TimeoutError(f"no queued job for client {client_id}")

    def claim(self, job_id: uuid.UUID | str) -> jobs.Claim:
        """Claim the job as a worker would: it is running from then on."""
        with self._services.db.session() as session:
            claim = jobs.claim_job(
                session, uuid.UUID(str(job_id)), worker=self.WORKER, lease_seconds=self.LEASE_S
            )
        assert claim is not None, f"job {job_id} was not claimable"
        return claim

    def run(
        self, job_id: uuid.UUID | str, *, result: bytes, steps: int = 3, step_s: float = 0.05
    ) -> None:
        """Claim, report ``steps`` progress beats, store ``result`` and succeed."""
        job_id = uuid.UUID(str(job_id))
        with self._services.db.session() as session:
            claim = jobs.claim_job(session, job_id, worker=self.WORKER, lease_seconds=self.LEASE_S)
            assert claim is not None, f"job {job_id} was not claimable"
            iterations = 10 * steps
            for step in range(1, steps + 1):
                time.sleep(step_s)
                leases.heartbeat(
                    session,
                    claim,
                    iteration=10 * step,
                    iterations=iterations,
                    eta_seconds=(steps - step) * step_s,
                    lease_seconds=self.LEASE_S,
                )
            self._services.storage.put(job_id, RESULT_FILE, result)
            jobs.finish_job(session, claim)

    def fail(self, job_id: uuid.UUID | str, *, code: str, message: str) -> None:
        job_id = uuid.UUID(str(job_id))
        with self._services.db.session() as session:
            claim = jobs.claim_job(session, job_id, worker=self.WORKER, lease_seconds=self.LEASE_S)
            assert claim is not None
            jobs.fail_job(session, claim, code=code, message=message)

    def in_background(self, target: Callable[[], None]) -> threading.Thread:
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # surfaced by join_checked
                errors.append(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        thread.errors = errors  # type: ignore[attr-defined]
        thread.start()
        return thread


def join_checked(thread: threading.Thread, timeout_s: float = 30.0) -> None:
    """Join a JobDriver.in_background thread and re-raise what it raised."""
    thread.join(timeout_s)
    assert not thread.is_alive(), "the job driver did not finish"
    errors: list[BaseException] = thread.errors  # type: ignore[attr-defined]
    if errors:
        raise errors[0]
