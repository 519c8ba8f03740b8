"""A job's JSON built from plain dicts: the hot path of every poll and submit.

``api.schemas.JobOut`` stays the documented shape (``/openapi.json`` is
generated from it); constructing and validating it cost about a tenth of a
poll's CPU, so responses are built here instead, and a test holds the two
equal for jobs in every state.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.job_view import JobView, job_timings
from shared.memory_fit import LiveBudgets, memory_dict
from shared.models import JobStatus, utcnow
from shared.params import StyleParams

if TYPE_CHECKING:  # not imported: shared.queue_position reaches this module through the claims
    from shared.queue_position import QueueSnapshot

# Every parameter in the schema's order with its default: a row written before a
# parameter existed still shows it, and one that no longer exists is left out,
# as ``StyleParams.model_validate`` would have done.
_PARAM_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in StyleParams.model_fields.items()
}


def job_dict(
    job: JobView,
    now: datetime | None = None,
    budgets: LiveBudgets | None = None,
    queue: QueueSnapshot | None = None,
) -> dict[str, Any]:
    """The job as the API shows it (``JobOut``'s JSON), timings measured at ``now``.

    ``budgets``: the live workers' (``shared.memory_fit``), for whether the job fits
    none of them; None: not read, it says it fits. ``queue``: the fair order's snapshot
    (``shared.queue_position``), for a queued job's place; None: not read (``queue``
    null)."""
    now = now or utcnow()
    base = f"/v1/jobs/{job.id}"
    created_at, started_at, finished_at = job.created_at, job.started_at, job.finished_at
    timings = job_timings(created_at, started_at, finished_at, now)
    stored = job.params
    return {
        "id": str(job.id),
        "status": job.status.value,
        "params": {name: stored.get(name, default) for name, default in _PARAM_DEFAULTS.items()},
        "progress": {
            "iteration": job.iteration,
            "iterations": job.iterations,
            "percent": job.percent,
            "eta_seconds": job.eta_seconds,
        },
        "attempts": job.attempts,
        "cached": job.cached,
        "shared": job.follows is not None,
        "worker": job.worker,
        "error": (
            None
            if job.error_code is None
            else {"code": job.error_code, "message": job.error_message or ""}
        ),
        "created_at": _timestamp(created_at),
        "started_at": _timestamp(started_at),
        "finished_at": _timestamp(finished_at),
        "deadline_at": _timestamp(job.deadline_at),
        "queue_seconds": timings.queue_seconds,
        "run_seconds": timings.run_seconds,
        "urls": {
            "self": base,
            "result": f"{base}/result",
            "preview": f"{base}/preview",
            "cancel": f"{base}/cancel",
        },
        "warnings": [{"code": w["code"], "message": w["message"]} for w in job.warnings],
        "memory": memory_dict(job.memory_estimate, job.status, budgets),
        "priority": job.priority,
        "queue": _queue(job, queue, now),
    }


def _queue(job: JobView, queue: QueueSnapshot | None, now: datetime) -> dict[str, Any] | None:
    if queue is None or job.status is not JobStatus.QUEUED:
        return None
    found = queue.queue_dict(job.id, job.follows, now)
    at = found["expected_start_at"]
    return {**found, "expected_start_at": _timestamp(at) if isinstance(at, datetime) else None}


def job_json(
    job: JobView,
    now: datetime | None = None,
    budgets: LiveBudgets | None = None,
    queue: QueueSnapshot | None = None,
) -> str:
    """``job_dict`` as compact JSON text, as pydantic writes it."""
    return json.dumps(job_dict(job, now, budgets, queue), separators=(",", ":"), allow_nan=False)


def _timestamp(value: datetime | None) -> str | None:
    # pydantic writes UTC as "Z"; every timestamp read from the database is UTC.
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
