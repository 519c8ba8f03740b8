"""The line a worker logs for a job failed by the attempts cap (``too_many_attempts``).

Two places fail such a job: a worker's claim that finds it (``worker.runner``)
and the reconciler's sweep (``worker.tasks``). Both log it here, as one event.
"""

from __future__ import annotations

import logging

from shared import jobs
from shared.logging import job_event
from shared.models import EventKind

log = logging.getLogger(__name__)


def log_too_many_attempts(failure: jobs.Exhausted, *, worker: str | None = None) -> None:
    """The ``failed`` event of a job whose workers died too often; ``worker``: the
    worker whose claim found it (none for the reconciler)."""
    who = {} if worker is None else {"worker": worker}
    log.warning(
        "job %s failed: %s: %s",
        failure.job_id,
        jobs.TOO_MANY_ATTEMPTS,
        failure.message,
        extra=job_event(
            EventKind.FAILED,
            failure.job_id,
            error_code=jobs.TOO_MANY_ATTEMPTS,
            **who,
            attempt=failure.attempts,
        ),
    )
