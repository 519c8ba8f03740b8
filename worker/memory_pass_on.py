"""A job too big for the worker that took its message, sent on to one it fits.

A worker claims only jobs within its budget (``worker.memory_budget``); the message it
took may name a job too big for it, and with that message gone the job would wait for
the reconciler's re-send of old queued jobs. So after a delivery in which it found
nothing to claim, a worker sends on the oldest queued job too big for it that a live
worker can fit (``job_to_pass_on``), a second later (``PASS_ON_SECONDS``).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.celery_app import JOBS_QUEUE, PUBLISH_RETRY_POLICY, RUN_JOB_TASK
from shared.memory_fit import read_live_budgets
from shared.models import Job, JobStatus

if TYPE_CHECKING:
    from celery import Celery

    from worker.context import WorkerContext

log = logging.getLogger(__name__)


# A job too big for the worker that took its message is sent on after this long, so
# that a message bouncing between small workers costs one delivery a second at most.
PASS_ON_SECONDS = 1.0


def job_to_pass_on(session: Session, budget: int, queue_name: str) -> uuid.UUID | None:
    """After a claim found nothing for this worker: the oldest queued job too big for its
    ``budget`` that a live worker can fit (None: none). Its message may have been the
    one just taken; sent again, a worker that fits it gets a chance. A job that fits no
    live worker is left queued: the reconciler's re-send is its chance when one comes."""
    budgets = read_live_budgets(session)
    if budgets.live == 0:
        return None
    conditions = [
        Job.status == JobStatus.QUEUED,
        Job.follows.is_(None),
        Job.queue_name == queue_name,
        Job.memory_estimate > budget,
    ]
    if budgets.largest is not None:
        conditions.append(Job.memory_estimate <= budgets.largest)
    found = session.scalars(
        select(Job.id).where(*conditions).order_by(Job.created_at).limit(1)
    ).first()
    session.rollback()
    return found


def pass_on_too_big(app: Celery, ctx: WorkerContext) -> None:
    """Send on (in ``PASS_ON_SECONDS``) the job ``job_to_pass_on`` finds; best effort."""
    try:
        with ctx.db.session() as session:
            job_id = job_to_pass_on(session, ctx.memory_budget(), ctx.settings.redis_prefix)
        if job_id is None:
            return
        app.send_task(
            RUN_JOB_TASK,
            args=[str(job_id)],
            queue=JOBS_QUEUE,
            countdown=PASS_ON_SECONDS,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
        log.info("job %s is too big for worker %s: sent on", job_id, ctx.name)
    except Exception:
        log.warning("could not send on a job too big for worker %s", ctx.name, exc_info=True)
