"""A client's jobs, newest first, one keyset page at a time (``GET /v1/jobs``).

The admin's list of every client's jobs is ``shared.admin.list_jobs``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shared.job_view import JOB_VIEW_COLUMNS, JobView
from shared.models import Job, JobStatus
from shared.pagination import Cursor


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobView]
    next_cursor: str | None  # pass back as ``Cursor.decode(next_cursor)``; None: last page


def list_jobs(
    session: Session,
    *,
    client_id: int,
    status: JobStatus | None,
    limit: int,
    cursor: Cursor | None,
) -> JobPage:
    """A client's jobs (of ``status``, if given), newest first, ``limit`` after ``cursor``."""
    query = select(*JOB_VIEW_COLUMNS).where(Job.client_id == client_id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.job_id),
            )
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = [JobView(*row) for row in session.execute(query)]
    if len(rows) <= limit:
        return JobPage(rows, None)
    last = rows[limit - 1]
    return JobPage(rows[:limit], Cursor(last.created_at, last.id).encode())
