"""The Celery tasks. They take ids, re-read the database, and hand over to ``worker.runner``."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from celery import Task, current_app, shared_task
from celery.signals import celeryd_init, setup_logging, worker_process_init

from shared import jobs
from shared.celery_app import RECONCILE_TASK, RUN_JOB_TASK, enqueue_job, settings_of
from shared.jobs import EventKind
from shared.logging import configure_logging, job_event

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


@celeryd_init.connect
def configure_logging_first(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Our log format before the worker's first line (its warning when run as root comes next)."""
    configure_logging(fallback_level=(options or {}).get("loglevel"))


@setup_logging.connect
def use_stylequeue_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery's lines and ours in one format: text, or JSON with STYLEQUEUE_LOG_FORMAT=json.

    Connected, this signal also keeps Celery from installing handlers of its own.
    """
    configure_logging(fallback_level=loglevel)


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
    """Re-enqueue queued jobs the broker lost and running jobs whose worker died;
    remove the files of jobs finished longer ago than the retention period."""
    from shared.db import Database
    from shared.storage import LocalStorage

    settings = settings_of(self.app)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            requeued = jobs.requeue_stale_jobs(
                session,
                older_than_seconds=settings.requeue_after_seconds,
                enqueue=lambda job_id: enqueue_job(self.app, job_id),
            )
            expired: list[uuid.UUID] = []
            if settings.retention_seconds > 0:
                expired = jobs.delete_expired_files(
                    session,
                    LocalStorage(settings.data_dir),
                    older_than_seconds=settings.retention_seconds,
                )
    finally:
        db.dispose()
    for job_id in expired:
        log.info(
            "job %s: files removed after the retention period",
            job_id,
            extra=job_event(EventKind.FILES_DELETED, job_id),
        )
    for job_id in requeued:
        log.info(
            "job %s re-enqueued by the reconciler",
            job_id,
            extra=job_event(EventKind.REQUEUED, job_id),
        )
    return len(requeued)
