"""After a job's outcome: its followers (in-flight sharing, ``shared.follows``) end with it,
or one of them takes the run over, best effort (the reconciler repairs what this misses)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session

from shared import follows
from shared.follows import Checkpoint
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def settle_after(
    ctx: WorkerContext,
    session: Session,
    job_id: uuid.UUID,
    *,
    checkpoint: Callable[[], Checkpoint | None] | None = None,
) -> None:
    """Settle the followers of ``job_id``, whose outcome is committed; send a promoted one.

    ``checkpoint``: the state the engine stopped in, for a follower that takes over a
    canceled run. A failure here is logged and left to the reconciler's sweep.
    """
    try:
        promoted = follows.settle_followers(session, ctx.storage, job_id, checkpoint=checkpoint)
    except Exception:
        session.rollback()
        log.warning(
            "job %s: its followers not settled; left to the reconciler", job_id, exc_info=True
        )
        return
    for new_leader in promoted:
        if ctx.enqueue is None:
            continue  # queued, following no one: the reconciler sends it
        try:
            ctx.enqueue(new_leader)
        except Exception:
            log.warning("job %s: promoted but not sent; left to the reconciler", new_leader)
