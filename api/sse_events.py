"""What a job's event stream sends, derived from its row: the events between two reads.

``status`` (the job's JSON) when its status or attempt changes; ``progress``
(iteration, iterations, percent, eta_seconds) when a running job's iteration
moves, at most once per ``PROGRESS_INTERVAL_SECONDS`` (a quicker change waits, and
its latest value is sent then); ``preview`` (its URL) when the row names a new
preview; ``done`` (the job's JSON) once it has finished; ``queue`` (the job JSON's
``queue`` object: position, expected start) when a queued job's position changes,
looked at every ``QUEUE_SECONDS``. The stream itself is ``api.live``.
"""

from __future__ import annotations

import math
from typing import Any

from shared.job_json import job_dict
from shared.job_store import JOB_STATE_COLUMNS
from shared.job_view import JobView
from shared.models import JobStatus
from shared.queue_position import QueueSnapshot

PROGRESS_INTERVAL_SECONDS = 0.5  # at most two progress events a second
PING_SECONDS = 15.0  # a comment line on an idle stream, so that proxies keep it open
FALLBACK_SECONDS = 5.0  # a wait re-reads at least this often, hint or not (as streams' sweep)
MAX_WAIT_SECONDS = 60  # a larger Prefer: wait is cut to this
QUEUE_SECONDS = 2.0  # a queued job's place is looked at this often (the snapshot is per second)


def job_event_data(job: JobView, queue: QueueSnapshot | None = None) -> dict[str, Any]:
    """A ``status`` or ``done`` event's data: the job as ``GET /v1/jobs/{id}`` shows it
    (``queue``: the fair order's snapshot, for a queued job's place)."""
    return job_dict(job, queue=queue)


def progress_data(job: JobView) -> dict[str, Any]:
    return {
        "iteration": job.iteration,
        "iterations": job.iterations,
        "percent": job.percent,
        "eta_seconds": job.eta_seconds,
    }


def job_state(job: JobView) -> tuple[object, ...]:
    """What of a job its events are made from: two reads that give the same state call for
    no event (``api.change_feed``'s sweep compares them with ``shared.job_store.job_states``)."""
    return tuple(getattr(job, name) for name in JOB_STATE_COLUMNS)


def status_changed_at_ms(job: JobView) -> int:
    """When the job last changed status as far as its row tells (created, started, finished),
    in milliseconds since the epoch: the scale of the stream's event ids."""
    times = [t for t in (job.created_at, job.started_at, job.finished_at) if t is not None]
    return int(max(t.timestamp() for t in times) * 1000)


class EventDiff:
    """What one stream sent last, and the events a newer read of the job calls for."""

    def __init__(self, job: JobView) -> None:
        self._status = (job.status, job.attempts)
        self._progress = (job.iteration, job.iterations)
        self._preview = job.preview_file
        self._progress_sent_at = -math.inf
        self.progress_due_at: float | None = None  # a held-back progress event is due then
        self._position: int | None = None  # the queue position sent last

    def sent_queue(self, data: dict[str, Any] | None) -> None:
        """A status event sent with this ``queue`` object (None: not queued)."""
        self._position = None if data is None else data["position"]

    def queue_event(self, job: JobView, queue: QueueSnapshot) -> list[tuple[str, dict[str, Any]]]:
        """A ``queue`` event if queued ``job``'s position moved since the last one sent."""
        data = job_dict(job, queue=queue)["queue"]
        # No position: past the window, or no longer claimable (this read of the job may be
        # older than the snapshot): nothing to tell yet.
        if data is None or data["position"] is None or data["position"] == self._position:
            return []
        self._position = data["position"]
        return [("queue", data)]

    def events(
        self, job: JobView, now: float, queue: QueueSnapshot | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The events that ``job`` (read now) calls for, in order; ``now``: monotonic seconds;
        ``queue``: the fair order's snapshot, for a status event of a queued job."""
        if job.status.is_finished:
            return [("done", job_event_data(job))]
        found: list[tuple[str, dict[str, Any]]] = []
        progress = (job.iteration, job.iterations)
        if (job.status, job.attempts) != self._status:
            self._status = (job.status, job.attempts)
            self._progress, self.progress_due_at = progress, None  # the job's JSON has it
            data = job_event_data(job, queue)
            self.sent_queue(data["queue"])
            found.append(("status", data))
        elif progress != self._progress and job.status is JobStatus.RUNNING:
            if now - self._progress_sent_at >= PROGRESS_INTERVAL_SECONDS:
                self._progress, self._progress_sent_at = progress, now
                self.progress_due_at = None
                found.append(("progress", progress_data(job)))
            else:
                self.progress_due_at = self._progress_sent_at + PROGRESS_INTERVAL_SECONDS
        else:
            self.progress_due_at = None
        if job.preview_file != self._preview:
            self._preview = job.preview_file
            if job.preview_file is not None:
                found.append(("preview", {"url": f"/v1/jobs/{job.id}/preview"}))
        return found
