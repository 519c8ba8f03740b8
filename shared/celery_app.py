"""The Celery app: Redis as the broker, carrying job ids only; the database is the truth.

The API sends tasks by name (``send_task``) so it never imports the worker
(or torch). The settings below meet Celery's pitfalls for long jobs head on.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from shared.settings import Settings

RUN_JOB_TASK = "stylequeue.run_job"
RECONCILE_TASK = "stylequeue.reconcile"
JOBS_QUEUE = "stylequeue.jobs"  # the GPU workers
MAINTENANCE_QUEUE = "stylequeue.maintenance"  # the scheduler's own worker

# A second delivery is harmless (the claim makes it a no-op), but an early one
# would start a retry while the first run is still healthy: make it rare.
VISIBILITY_TIMEOUT_SECONDS = 24 * 3600
BROKER_CONNECT_TIMEOUT_SECONDS = 2.0  # a submit must not hang on a dead Redis
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``; tasks register themselves on it (``shared_task``)."""
    app = Celery("stylequeue", broker=settings.redis_url, set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_default_queue=JOBS_QUEUE,
        task_routes={
            RUN_JOB_TASK: {"queue": JOBS_QUEUE},
            RECONCILE_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        broker_transport_options=broker_transport_options(settings),
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "reconcile": {"task": RECONCILE_TASK, "schedule": settings.reconcile_seconds},
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        timezone="UTC",
    )
    app.conf["stylequeue_settings"] = settings
    return app


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        # Every key we and Celery put in Redis starts with this, so deployments
        # (and test runs) sharing one Redis never see each other's messages.
        "global_keyprefix": settings.redis_prefix,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
    }


def enqueue_job(app: Celery, job_id: uuid.UUID) -> None:
    """Send a job id to the workers (after its row is committed)."""
    app.send_task(
        RUN_JOB_TASK,
        args=[str(job_id)],
        queue=JOBS_QUEUE,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def settings_of(app: Celery) -> Settings:
    """The settings an app was created with."""
    settings = app.conf.get("stylequeue_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not made by create_celery")
    return settings
