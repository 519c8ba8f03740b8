"""The statistics' time series: per hour of the window, jobs created, jobs finished by
outcome, and the queue's depth; grouped by day for windows longer than two days.

The queue's depth at a moment is the number of jobs created by then that had
neither started nor ended (``started_at``, else ``finished_at``, is the end of a
job's wait): the window's first depth plus the jobs created since, minus those
whose wait ended since. Every count reads the jobs that finished in the window
(``ix_jobs_finished``) or are queued or running (``ix_jobs_status_created``),
and the jobs created in the window (``ix_jobs_created``): no scan of older rows.
A job an admin retried has its start and end cleared, so it counts as waiting
from its creation until its new start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.sql_time import dialect_of, hour_number

DAY_BUCKETS_AFTER_HOURS = 48  # a longer window is drawn by day


@dataclass(frozen=True)
class SeriesBucket:
    """One bar of the statistics' charts: an hour, or a day (UTC)."""

    start: datetime  # UTC; a day bucket starts at midnight (the first may begin later)
    hours: int  # 1 or 24
    created: int
    succeeded: int
    failed: int
    canceled: int
    queued: int  # jobs waiting at the bucket's end (at ``now`` for the current one)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled


def bucket_hours(hours: int) -> int:
    """The width of a window's buckets: an hour up to two days, a day past that."""
    return 1 if hours <= DAY_BUCKETS_AFTER_HOURS else 24


def hourly_series(
    session: Session, start: datetime, now: datetime, hours: int
) -> list[SeriesBucket]:
    """``hours`` hour buckets from ``start`` (on the hour, UTC), the last one holding ``now``."""
    dialect = dialect_of(session)
    first = int(start.timestamp()) // 3600
    numbers = range(first, first + hours)
    created = dict.fromkeys(numbers, 0)
    left = dict.fromkeys(numbers, 0)
    ended: dict[JobStatus, dict[int, int]] = {
        s: dict.fromkeys(numbers, 0)
        for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
    }

    def add(target: dict[int, int], number: Any, count: Any) -> None:
        if int(number) in target:
            target[int(number)] += int(count)

    hour = hour_number(dialect, Job.created_at).label("hour")
    for number, count in session.execute(
        select(hour, func.count())
        .where(Job.created_at >= start, Job.created_at <= now)
        .group_by(hour)
    ):
        add(created, number, count)
    hour = hour_number(dialect, Job.finished_at).label("hour")
    for number, status, count in session.execute(
        select(hour, Job.status, func.count())
        .where(Job.finished_at >= start, Job.finished_at <= now)
        .group_by(hour, Job.status)
    ):
        if JobStatus(status) in ended:
            add(ended[JobStatus(status)], number, count)
    # The jobs whose wait may end in the window or go on past it.
    concerned = or_(Job.finished_at >= start, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    wait_end = func.coalesce(Job.started_at, Job.finished_at)
    hour = hour_number(dialect, wait_end).label("hour")
    for number, count in session.execute(
        select(hour, func.count())
        .where(concerned, wait_end >= start, wait_end <= now)
        .group_by(hour)
    ):
        add(left, number, count)
    waiting = int(
        session.scalar(
            select(func.count()).where(
                concerned,
                Job.created_at < start,
                or_(wait_end.is_(None), wait_end >= start),
            )
        )
        or 0
    )
    out: list[SeriesBucket] = []
    for number in numbers:
        waiting = max(0, waiting + created[number] - left[number])
        out.append(
            SeriesBucket(
                start=datetime.fromtimestamp(number * 3600, UTC),
                hours=1,
                created=created[number],
                succeeded=ended[JobStatus.SUCCEEDED][number],
                failed=ended[JobStatus.FAILED][number],
                canceled=ended[JobStatus.CANCELED][number],
                queued=waiting,
            )
        )
    return out


def by_day(series: list[SeriesBucket]) -> list[SeriesBucket]:
    """Hour buckets summed by UTC day; a day's queue depth is its last hour's."""
    days: list[SeriesBucket] = []
    for bucket in series:
        day = bucket.start.replace(hour=0)
        if days and days[-1].start == day:
            last = days[-1]
            days[-1] = SeriesBucket(
                day,
                24,
                last.created + bucket.created,
                last.succeeded + bucket.succeeded,
                last.failed + bucket.failed,
                last.canceled + bucket.canceled,
                bucket.queued,
            )
        else:
            days.append(
                SeriesBucket(
                    day,
                    24,
                    bucket.created,
                    bucket.succeeded,
                    bucket.failed,
                    bucket.canceled,
                    bucket.queued,
                )
            )
    return days


def window_label(hours: int) -> str:
    """How the page names a window: "6 h", "24 h", "7 days" (a whole number of days past 48 h)."""
    if hours <= DAY_BUCKETS_AFTER_HOURS or hours % 24:
        return f"{hours} h"
    days = hours // 24
    return f"{days} day{'s' if days != 1 else ''}"
