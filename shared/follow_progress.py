"""A leader's progress copied to its followers (in-flight sharing, ``shared.follows``).

Every change of a job's row goes through ``shared.job_store.guarded_update``;
when the change is of the leader's status (queued ↔ running) or progress
(iteration, percent, ETA, preview, start), the same values are written to its
live followers in the same transaction, so that every reader of a follower's row
(the poll, the list, the admin pages, the live events) sees the leader's
progress without a join, and the change hint goes to each follower's channel too.
A leader's end is not copied here: ``shared.follows.settle_followers`` ends its
followers after it, with their own copy of the result.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus

# What of a leader's row its followers show as their own.
MIRRORED = ("iteration", "iterations", "percent", "eta_seconds", "started_at", "preview_file")
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def copy_to_followers(session: Session, leader: uuid.UUID, values: dict[str, Any]) -> list[Any]:
    """Write the mirrored ``values`` of a change of ``leader`` to its live followers, in the
    caller's transaction; their ids (none when the change mirrors nothing)."""
    status = values.get("status")
    if status is not None and status not in LIVE:
        return []  # an end: the followers' own ends are written after it
    mirrored = {name: values[name] for name in MIRRORED if name in values}
    if status is not None:
        mirrored["status"] = status
    if not mirrored:
        return []
    return list(
        session.execute(
            update(Job)
            .where(Job.follows == leader, Job.status.in_(LIVE))
            .values(**mirrored)
            .returning(Job.id)
        ).scalars()
    )
