"""The scheduler's periodic task, run eagerly against the real database and Redis."""

from __future__ import annotations

import uuid
from datetime import timedelta

from flask import Flask
from sqlalchemy import update

from api.services import EXTENSION_KEY
from shared.celery_app import JOBS_QUEUE, RECONCILE_TASK, create_celery
from shared.models import Job, utcnow
from shared.settings import Settings
from worker import tasks


def test_reconcile_re_enqueues_a_queued_job_the_broker_lost(
    submit, app: Flask, settings: Settings
) -> None:
    job_id = submit().json["id"]
    services = app.extensions[EXTENSION_KEY]
    queue = f"{settings.redis_prefix}{JOBS_QUEUE}"
    services.redis.delete(queue)  # the broker lost every message (e.g. a Redis flush)
    with services.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(updated_at=utcnow() - timedelta(seconds=settings.requeue_after_seconds + 1))
        )
        session.commit()
    celery = create_celery(settings)
    assert celery.tasks[RECONCILE_TASK].name == tasks.reconcile.name
    result = celery.tasks[RECONCILE_TASK].apply()
    assert result.get() >= 1
    messages = services.redis.lrange(queue, 0, -1)
    assert any(job_id.encode() in m for m in messages)


def test_the_scheduler_runs_the_reconciler_periodically(settings: Settings) -> None:
    schedule = create_celery(settings).conf.beat_schedule
    assert schedule["reconcile"]["task"] == RECONCILE_TASK
    assert schedule["reconcile"]["schedule"] == settings.reconcile_seconds
