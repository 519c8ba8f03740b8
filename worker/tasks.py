"""The Celery tasks. They take ids, re-read the database, and hand over to ``worker.runner``."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from celery import Task, current_app, shared_task
from celery.signals import worker_process_init

from shared import jobs
from shared.celery_app import RECONCILE_TASK, RUN_JOB_TASK, enqueue_job, settings_of

if TYPE_CHECKING:
    from celery import Celery

    from worker.runner import WorkerContext

log = logging.getLogger(__name__)

_context: WorkerContext | None = None  # this process's, built after the fork


def _worker_context(settings_app: Celery) -> WorkerContext:
    # torch is imported here, not at module import: the scheduler's worker and
    # the prefork parent never load it, and CUDA is only touched after the fork.
    from worker.runner import make_context

    global _context
    if _context is None:
        _context = make_context(settings_of(settings_app))
    return _context


@worker_process_init.connect
def load_model_after_fork(**_: Any) -> None:
    """Load the network once per worker process, in the child, before its first job."""
    _worker_context(current_app).network()


@shared_task(bind=True, name=RUN_JOB_TASK, ignore_result=True)
def run_job(self: Task, job_id: str) -> str:
    """Run the job with this id (claimed first: a duplicate message is a no-op)."""
    from worker.runner import run_job as run

    try:
        parsed = uuid.UUID(job_id)
    except (ValueError, TypeError):
        log.error("dropping a message with a malformed job id: %r", job_id)
        return "malformed"
    return str(run(_worker_context(self.app), parsed))


@shared_task(bind=True, name=RECONCILE_TASK, ignore_result=True)
def reconcile(self: Task) -> int:
    """Re-enqueue queued jobs the broker lost and running jobs whose worker died."""
    from shared.db import Database

    settings = settings_of(self.app)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            requeued = jobs.requeue_stale_jobs(
                session,
                older_than_seconds=settings.requeue_after_seconds,
                enqueue=lambda job_id: enqueue_job(self.app, job_id),
            )
    finally:
        db.dispose()
    if requeued:
        log.info("re-enqueued %d queued jobs: %s", len(requeued), ", ".join(map(str, requeued)))
    return len(requeued)
