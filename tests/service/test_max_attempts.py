"""The attempts cap (STYLEQUEUE_MAX_ATTEMPTS) and the reconciler's pickup of a dead
worker's job, in shared.jobs on a real database (PostgreSQL and SQLite).

An attempt "died" when its lease ran out without a finish; one handed back on a
shutdown (``released``) does not count.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import jobs, leases, reconciler, submissions
from shared.auth import create_client
from shared.models import Job, JobEvent, JobStatus, utcnow
from shared.params import parse_params
from shared.storage import CHECKPOINT_FILE, CONTENT_FILE, LocalStorage

LEASE = 30.0


@pytest.fixture
def client_id(session: Session) -> int:
    client, _ = create_client(session, "max-attempts")
    return client.id


def new_job(session: Session, storage: LocalStorage, client_id: int) -> Job:
    job, _ = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": 32, "iterations": 10}),
        content=b"content",
        styles=[b"style"],
        idempotency_key=None,
        enqueue=lambda _: None,
    )
    return job


def claim(session: Session, job_id: uuid.UUID, worker: str, cap: int) -> jobs.Claim | None:
    return jobs.claim_job(session, job_id, worker=worker, lease_seconds=LEASE, max_attempts=cap)


def worker_dies(session: Session, job_id: uuid.UUID) -> None:
    """The holder stops renewing: its last heartbeat 10 s ago, its lease ran out 5 s ago."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(updated_at=now - timedelta(seconds=10), lease_expires_at=now - timedelta(seconds=5))
    )
    session.commit()


def reload(session: Session, job_id: uuid.UUID) -> Job:
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def kinds(session: Session, job_id: uuid.UUID) -> list[str]:
    query = select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    return list(session.scalars(query))


def test_a_job_whose_workers_died_cap_times_fails_instead_of_being_claimed(
    session, storage, client_id
):
    job = new_job(session, storage, client_id)
    for attempt, worker in enumerate(["h/1", "h/2", "h/3"], start=1):
        assert jobs.fail_exhausted_job(session, job.id, max_attempts=3) is None
        held = claim(session, job.id, worker, cap=3)
        assert held is not None and held.attempt == attempt
        assert jobs.fail_exhausted_job(session, job.id, max_attempts=3) is None, "a live lease"
        worker_dies(session, job.id)

    assert claim(session, job.id, "h/4", cap=3) is None, "three deaths: not claimable"
    row = reload(session, job.id)
    assert row.status is JobStatus.RUNNING and row.attempts == 3, "the refused claim wrote nothing"

    exhausted = jobs.fail_exhausted_job(session, job.id, max_attempts=3)
    assert exhausted is not None
    assert (exhausted.attempts, exhausted.died, exhausted.last_worker) == (3, 3, "h/3")
    row = reload(session, job.id)
    assert row.status is JobStatus.FAILED and row.error_code == "too_many_attempts"
    assert row.error_message is not None
    assert "3 attempts" in row.error_message and "h/3" in row.error_message
    assert "STYLEQUEUE_MAX_ATTEMPTS" in row.error_message
    assert row.lease_owner is None and row.finished_at is not None and row.attempts == 3
    assert kinds(session, job.id).count("claimed") == 3
    failed = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "failed")
    ).one()
    assert failed.attempt == 3 and failed.data["error_code"] == "too_many_attempts"
    assert failed.data["died"] == 3 and failed.data["last_worker"] == "h/3"

    # Finished: nothing more happens, whoever asks.
    assert claim(session, job.id, "h/5", cap=3) is None
    assert jobs.fail_exhausted_job(session, job.id, max_attempts=3) is None
    assert kinds(session, job.id).count("failed") == 1


def test_attempts_handed_back_on_a_shutdown_do_not_count(session, storage, client_id):
    job = new_job(session, storage, client_id)
    for worker in ("h/1", "h/2"):  # two clean hand-backs (SIGTERM)
        held = claim(session, job.id, worker, cap=2)
        assert held is not None
        jobs.release_job(session, held, iteration=3)
    held = claim(session, job.id, "h/3", cap=2)
    assert held is not None and held.attempt == 3
    worker_dies(session, job.id)  # one death: 1 of 2
    held = claim(session, job.id, "h/4", cap=2)
    assert held is not None and held.attempt == 4, "released attempts are not deaths"
    worker_dies(session, job.id)  # the second death
    assert claim(session, job.id, "h/5", cap=2) is None
    exhausted = jobs.fail_exhausted_job(session, job.id, max_attempts=2)
    assert exhausted is not None and (exhausted.attempts, exhausted.died) == (4, 2)
    assert reload(session, job.id).error_code == "too_many_attempts"


def test_without_a_cap_the_claim_is_as_before(session, storage, client_id):
    job = new_job(session, storage, client_id)
    for attempt in range(1, 5):
        held = jobs.claim_job(session, job.id, worker=f"h/{attempt}", lease_seconds=LEASE)
        assert held is not None and held.attempt == attempt
        worker_dies(session, job.id)


def test_the_reconciler_fails_exhausted_jobs_and_removes_their_checkpoint(
    session, storage, client_id
):
    exhausted = new_job(session, storage, client_id)
    alive = new_job(session, storage, client_id)  # attempts at the cap, but its worker lives
    retry = new_job(session, storage, client_id)  # one death, attempts left
    for job in (exhausted, alive, retry):
        storage.put(job.id, CHECKPOINT_FILE, b"state")
    for _ in range(2):
        assert claim(session, exhausted.id, "h/1", cap=2)
        worker_dies(session, exhausted.id)
    assert claim(session, alive.id, "h/2", cap=2)
    worker_dies(session, alive.id)
    assert claim(session, alive.id, "h/3", cap=2)  # attempt 2, under a live lease
    assert claim(session, retry.id, "h/4", cap=2)
    worker_dies(session, retry.id)

    ours = {exhausted.id, alive.id, retry.id}  # the database is shared with other tests
    failed = reconciler.fail_exhausted_jobs(session, storage, max_attempts=2)
    assert [f.job_id for f in failed if f.job_id in ours] == [exhausted.id]
    assert reload(session, exhausted.id).error_code == "too_many_attempts"
    assert not storage.exists(exhausted.id, CHECKPOINT_FILE)
    assert storage.exists(exhausted.id, CONTENT_FILE), "only the checkpoint goes"
    assert reload(session, alive.id).status is JobStatus.RUNNING
    assert reload(session, retry.id).status is JobStatus.RUNNING
    assert storage.exists(alive.id, CHECKPOINT_FILE) and storage.exists(retry.id, CHECKPOINT_FILE)

    sent: list[uuid.UUID] = []
    reconciler.requeue_stale_jobs(session, older_than_seconds=300, enqueue=sent.append)
    assert [job_id for job_id in sent if job_id in ours] == [retry.id], (
        "the failed job is not sent again; the live one is left alone"
    )
    again = reconciler.fail_exhausted_jobs(session, storage, max_attempts=2)
    assert not {f.job_id for f in again} & ours


def test_a_dead_workers_job_is_re_sent_as_soon_as_its_lease_expires(session, storage, client_id):
    dead = new_job(session, storage, client_id)
    alive = new_job(session, storage, client_id)
    assert jobs.claim_job(session, dead.id, worker="h/1", lease_seconds=0.05)
    assert jobs.claim_job(session, alive.id, worker="h/2", lease_seconds=LEASE)
    time.sleep(0.1)  # h/1 sends no heartbeat: its lease runs out

    ours = {dead.id, alive.id}  # the database is shared with other tests

    def reconcile() -> list[uuid.UUID]:
        sent: list[uuid.UUID] = []
        reconciler.requeue_stale_jobs(session, older_than_seconds=300, enqueue=sent.append)
        return [job_id for job_id in sent if job_id in ours]

    # Not requeue-after (300 s) later: at the first reconciler run after the expiry.
    assert reconcile() == [dead.id]
    assert reconcile() == [], "re-sent once per period, not on every run"
    # A period later, still unclaimed (no worker free): sent again.
    session.execute(
        update(Job).where(Job.id == dead.id).values(updated_at=utcnow() - timedelta(seconds=301))
    )
    session.commit()
    assert reconcile() == [dead.id]
    held = jobs.claim_job(session, dead.id, worker="h/3", lease_seconds=LEASE, max_attempts=3)
    assert held is not None and held.attempt == 2
    assert kinds(session, dead.id).count("requeued") == 2


def expire(
    session: Session, job_id: uuid.UUID, worker: str, pid: int, host: str = "h"
) -> int | None:
    return leases.expire_lease_of_dead_worker(
        session, job_id, worker=worker, pid=pid, hostname=host
    )


def claim_as(
    session: Session, job_id: uuid.UUID, worker: str, pid: int, host: str = "h", *, cap: int
) -> jobs.Claim | None:
    """A claim as a pool process makes it: its worker's node name, its own pid and host."""
    return jobs.claim_job(
        session,
        job_id,
        worker=worker,
        lease_seconds=LEASE,
        max_attempts=cap,
        pid=pid,
        hostname=host,
    )


def test_a_dead_pool_process_lease_ends_at_once_and_counts_as_a_death(session, storage, client_id):
    job = new_job(session, storage, client_id)
    held = claim_as(session, job.id, "a@h", 1, cap=2)
    assert held is not None
    assert claim_as(session, job.id, "b@h", 2, cap=2) is None, "a live lease"
    # Only the process named can be declared dead: another worker, another pool process
    # of the same worker, or the same pid on another host changes nothing.
    assert expire(session, job.id, "b@h", 1) is None
    assert expire(session, job.id, "a@h", 9) is None
    assert expire(session, job.id, "a@h", 1, host="elsewhere") is None
    assert claim_as(session, job.id, "b@h", 2, cap=2) is None

    assert expire(session, job.id, "a@h", 1) == 1
    retry = claim_as(session, job.id, "b@h", 2, cap=2)
    assert retry is not None and retry.attempt == 2, "claimable at once"
    assert kinds(session, job.id)[-2:] == ["worker_lost", "claimed"]
    lost = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "worker_lost")
    ).one()
    assert (lost.attempt, lost.worker, lost.data) == (1, "a@h", {"pid": 1, "hostname": "h"})
    # The new holder's lease is not the dead one's: a late report of a@h changes nothing.
    assert expire(session, job.id, "a@h", 1) is None
    assert reload(session, job.id).lease_owner == "b@h"

    assert expire(session, job.id, "b@h", 2) == 2
    assert claim_as(session, job.id, "c@h", 3, cap=2) is None, "two deaths: the cap"
    exhausted = jobs.fail_exhausted_job(session, job.id, max_attempts=2)
    assert exhausted is not None and exhausted.last_worker == "b@h"


def test_the_lease_of_a_dead_pool_process_is_ended_but_not_its_successors(
    session, storage, client_id
):
    # One worker (one node name) whose pool process died, was restarted and claimed the
    # job again: a late report of the first process's death spares the second's attempt.
    job = new_job(session, storage, client_id)
    assert claim_as(session, job.id, "w@h", 100, cap=3) is not None
    worker_dies(session, job.id)
    again = claim_as(session, job.id, "w@h", 101, cap=3)
    assert again is not None and again.attempt == 2
    assert expire(session, job.id, "w@h", 100) is None, "attempt 1's process, not attempt 2's"
    row = reload(session, job.id)
    assert row.lease_owner == "w@h" and row.lease_expires_at is not None
    assert row.lease_expires_at > utcnow() + timedelta(seconds=LEASE / 2), "still live"
    assert "worker_lost" not in kinds(session, job.id)

    # Two hosts misconfigured with one name, their pool processes with the same pid: each
    # main process ends its own process's attempt only.
    worker_dies(session, job.id)
    third = claim_as(session, job.id, "w@h", 101, "twin", cap=3)
    assert third is not None and third.attempt == 3
    assert expire(session, job.id, "w@h", 101) is None, "attempt 2's host, not attempt 3's"
    assert expire(session, job.id, "w@h", 101, "twin") == 3


def test_the_main_process_ends_the_lease_its_pool_process_claimed(
    session: Session, storage: LocalStorage, client_id: int, database_url: str, tmp_path: Path
) -> None:
    from shared.celery_app import create_celery
    from shared.settings import Settings
    from worker.context import make_context
    from worker.runner import Outcome, run_job
    from worker.tasks import _end_lease_of_dead_process

    settings = Settings(database_url=database_url, data_dir=tmp_path, device="cpu")
    node = f"pool-test@{socket.gethostname()}"
    ctx = make_context(settings, node)
    try:
        # The runner claims under the node name and records its process in the claim.
        ran = new_job(session, storage, client_id)  # its inputs are no images: it fails
        assert run_job(ctx, ran.id) is Outcome.FAILED
        [claimed] = session.scalars(
            select(JobEvent).where(JobEvent.job_id == ran.id, JobEvent.kind == "claimed")
        ).all()
        assert claimed.worker == node
        assert claimed.data == {"pid": os.getpid(), "hostname": socket.gethostname()}
    finally:
        ctx.close()
    # A claim as that pool process made it; its worker's main process, which knows the node
    # name (the Celery request's) and the dead process's pid, ends exactly that lease.
    job = new_job(session, storage, client_id)
    assert claim_as(session, job.id, node, os.getpid(), socket.gethostname(), cap=3) is not None
    app = create_celery(settings)
    try:
        _end_lease_of_dead_process(app, [str(job.id)], node, os.getpid() + 1)  # another pid
        assert "worker_lost" not in kinds(session, job.id)
        _end_lease_of_dead_process(app, [str(job.id)], node, os.getpid())
    finally:
        app.close()
    assert kinds(session, job.id)[-1] == "worker_lost"
    row = reload(session, job.id)
    assert row.lease_expires_at is not None and row.lease_expires_at <= utcnow()
