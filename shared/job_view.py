"""A job as it is read, and its timings: what a job's JSON, the admin list and every
job the rules hand back are made from.

``JobView`` holds the columns of the ``jobs`` table that describe a job to someone
looking at it; ``JOB_VIEW_COLUMNS`` are those columns, taken from the table (so a
renamed or dropped column fails at import, not at the first poll). The rows a
rule changes are ``shared.models.Job``; what it hands back is a ``JobView``.
``job_timings`` is the one definition of a job's queue and run seconds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Column, Table

from shared.models import Job, JobStatus


@dataclass(frozen=True, slots=True)
class JobView:
    """A job's state, progress and outcome, as its client (or an admin) sees it."""

    id: uuid.UUID
    client_id: int
    status: JobStatus
    params: dict[str, Any]  # as stored: the parameters given, defaults filled in
    iteration: int
    iterations: int
    percent: float
    eta_seconds: float | None
    attempts: int  # how many times a worker has claimed it
    worker: str | None  # the worker that ran it last
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None  # the first claim of its current run
    finished_at: datetime | None
    n_styles: int  # how many style images it was given
    preview_file: str | None  # the committed preview's name; None: no preview yet
    cached: bool  # its result was copied from an earlier, identical job (shared.result_cache)
    deadline_at: datetime | None  # canceled (deadline_exceeded) if not finished by then
    # What its inputs may do badly, found at submit: {"code", "message"} each
    # (shared.input_warnings); empty when all is well.
    warnings: list[dict[str, str]]
    # Its order among its client's queued jobs (-10..10, higher first; shared.fair_share).
    priority: int
    # The identical job whose run it shares (shared.follows); None: it runs its own.
    follows: uuid.UUID | None
    # Its estimated peak device memory, bytes (shared.memory_estimate); None: not estimated.
    memory_estimate: int | None

    @classmethod
    def of(cls, row: Any) -> JobView:
        """The view of anything that has these columns as attributes (a ``Job``, a result row)."""
        return cls(*[getattr(row, name) for name in JOB_VIEW_FIELDS])


JOB_VIEW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobView))
JOB_VIEW_COLUMNS: tuple[Column[Any], ...] = tuple(
    cast(Table, Job.__table__).c[name] for name in JOB_VIEW_FIELDS
)


class JobTimings(NamedTuple):
    queue_seconds: float  # created → started (→ finished if it never started, → now if queued)
    run_seconds: float | None  # started → finished (→ now while running); None: never started


def job_timings(
    created_at: datetime, started_at: datetime | None, finished_at: datetime | None, now: datetime
) -> JobTimings:
    """How long a job waited and ran, as measured at ``now`` (timezone-aware datetimes).

    The wait is never negative (the API's and the worker's clocks may differ a little).
    """
    queue_end = started_at or finished_at or now
    return JobTimings(
        max(0.0, (queue_end - created_at).total_seconds()),
        None if started_at is None else ((finished_at or now) - started_at).total_seconds(),
    )
