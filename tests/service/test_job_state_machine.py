"""shared.jobs on a real database (PostgreSQL and SQLite): claims, leases, outcomes, cancel."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import jobs, leases, reconciler, submissions
from shared.auth import create_client
from shared.errors import LeaseLostError, StorageUnavailableError
from shared.models import Job, JobEvent, JobStatus, utcnow
from shared.params import parse_params
from shared.storage import CONTENT_FILE, LocalStorage

LEASE = 30.0


@pytest.fixture
def client_id(session: Session) -> int:
    client, _ = create_client(session, "state-machine")
    return client.id


def new_job(session: Session, storage: LocalStorage, client_id: int) -> Job:
    enqueued: list[uuid.UUID] = []
    job, created = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": 32, "iterations": 10}),
        content=b"content",
        styles=[b"style"],
        idempotency_key=None,
        enqueue=enqueued.append,
    )
    assert created and enqueued == [job.id]
    return job


def events(session: Session, job_id: uuid.UUID) -> list[str]:
    query = select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    return list(session.scalars(query))


def reload(session: Session, job_id: uuid.UUID) -> Job:
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def test_claim_takes_a_queued_job_once(session, storage, client_id):
    job = new_job(session, storage, client_id)
    claim = jobs.claim_job(session, job.id, worker="w1", lease_seconds=LEASE)
    assert claim is not None and claim.attempt == 1 and claim.n_styles == 1
    assert claim.params["size"] == 32
    again = jobs.claim_job(session, job.id, worker="w2", lease_seconds=LEASE)
    assert again is None, "a running job under a live lease is not claimable"
    row = reload(session, job.id)
    assert row.status is JobStatus.RUNNING and row.worker == "w1" and row.attempts == 1
    assert row.started_at is not None and row.lease_expires_at is not None
    assert events(session, job.id) == ["created", "claimed"]


def test_an_expired_lease_can_be_claimed_again_and_the_old_owner_is_locked_out(
    session, storage, client_id
):
    job = new_job(session, storage, client_id)
    old = jobs.claim_job(session, job.id, worker="w1", lease_seconds=LEASE)
    assert old is not None
    session.execute(
        update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    session.commit()
    new = jobs.claim_job(session, job.id, worker="w2", lease_seconds=LEASE)
    assert new is not None and new.attempt == 2
    with pytest.raises(LeaseLostError):
        leases.heartbeat(
            session, old, iteration=3, iterations=10, eta_seconds=1.0, lease_seconds=LEASE
        )
    with pytest.raises(LeaseLostError):
        jobs.finish_job(session, old)
    jobs.finish_job(session, new)
    assert reload(session, job.id).status is JobStatus.SUCCEEDED


def test_heartbeat_writes_progress_renews_the_lease_and_reports_cancel(session, storage, client_id):
    job = new_job(session, storage, client_id)
    claim = jobs.claim_job(session, job.id, worker="w1", lease_seconds=1.0)
    assert claim is not None
    first_lease = reload(session, job.id).lease_expires_at
    assert not leases.heartbeat(
        session, claim, iteration=4, iterations=10, eta_seconds=2.5, lease_seconds=LEASE
    )
    row = reload(session, job.id)
    assert (row.iteration, row.percent, row.eta_seconds) == (4, 40.0, 2.5)
    assert first_lease is not None and row.lease_expires_at is not None
    assert row.lease_expires_at > first_lease
    canceled = jobs.cancel_job(session, job.id, client_id=client_id)
    assert canceled.status is JobStatus.RUNNING and canceled.cancel_requested
    assert leases.heartbeat(
        session, claim, iteration=5, iterations=10, eta_seconds=2.0, lease_seconds=LEASE
    )
    jobs.cancel_running_job(session, claim, iteration=5)
    row = reload(session, job.id)
    assert row.status is JobStatus.CANCELED and row.finished_at is not None
    assert row.lease_owner is None
    assert events(session, job.id)[-2:] == ["cancel_requested", "canceled"]


def test_finish_and_fail_are_final(session, storage, client_id):
    ok = new_job(session, storage, client_id)
    bad = new_job(session, storage, client_id)
    ok_claim = jobs.claim_job(session, ok.id, worker="w", lease_seconds=LEASE)
    bad_claim = jobs.claim_job(session, bad.id, worker="w", lease_seconds=LEASE)
    assert ok_claim and bad_claim
    jobs.finish_job(session, ok_claim)
    jobs.fail_job(session, bad_claim, code="out_of_memory", message="try a smaller size")
    done = reload(session, ok.id)
    assert done.status is JobStatus.SUCCEEDED and done.percent == 100.0 and done.iteration == 10
    failed = reload(session, bad.id)
    assert failed.status is JobStatus.FAILED
    assert (failed.error_code, failed.error_message) == ("out_of_memory", "try a smaller size")
    for job_id in (ok.id, bad.id):
        assert jobs.claim_job(session, job_id, worker="w2", lease_seconds=LEASE) is None
        # Cancel of a finished job changes nothing.
        before = reload(session, job_id).status
        assert jobs.cancel_job(session, job_id, client_id=client_id).status is before


def test_cancel_of_a_queued_job_makes_it_unclaimable(session, storage, client_id):
    job = new_job(session, storage, client_id)
    assert jobs.cancel_job(session, job.id, client_id=client_id).status is JobStatus.CANCELED
    assert jobs.claim_job(session, job.id, worker="w", lease_seconds=LEASE) is None


def test_only_one_of_two_racing_workers_wins_the_claim(db, session, storage, client_id):
    job = new_job(session, storage, client_id)
    barrier = threading.Barrier(2)
    claims: list[jobs.Claim | None] = []

    def race(name: str) -> None:
        with db.session() as own:
            barrier.wait()
            claims.append(jobs.claim_job(own, job.id, worker=name, lease_seconds=LEASE))

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c is not None for c in claims) == [False, True]


def test_a_failed_store_leaves_no_row_and_no_files(session, tmp_path, client_id):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the jobs directory should be")
    broken = LocalStorage(blocker)
    before = session.query(Job).count()
    with pytest.raises(StorageUnavailableError):
        new_job(session, broken, client_id)
    assert session.query(Job).count() == before


def test_a_failed_enqueue_keeps_the_committed_job_queued(session, storage, client_id):
    def broker_down(_job_id: uuid.UUID) -> None:
        raise ConnectionError("redis is down")

    job, created = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({}),
        content=b"c",
        styles=[b"s"],
        idempotency_key=None,
        enqueue=broker_down,
    )
    assert created
    assert reload(session, job.id).status is JobStatus.QUEUED
    assert storage.exists(job.id, CONTENT_FILE)
    assert events(session, job.id) == ["created", "enqueue_failed"]


def test_the_reconciler_requeues_stale_queued_jobs_once_per_period(session, storage, client_id):
    stale = new_job(session, storage, client_id)
    fresh = new_job(session, storage, client_id)
    session.execute(
        update(Job).where(Job.id == stale.id).values(updated_at=utcnow() - timedelta(hours=1))
    )
    session.commit()
    sent: list[uuid.UUID] = []
    reconciler.requeue_stale_jobs(session, older_than_seconds=60, enqueue=sent.append)
    assert stale.id in sent and fresh.id not in sent
    sent.clear()
    reconciler.requeue_stale_jobs(session, older_than_seconds=60, enqueue=sent.append)
    assert stale.id not in sent
    assert events(session, stale.id)[-1] == "requeued"


def test_the_reconciler_requeues_a_running_job_whose_worker_died(session, storage, client_id):
    dead = new_job(session, storage, client_id)
    alive = new_job(session, storage, client_id)
    for job in (dead, alive):
        assert jobs.claim_job(session, job.id, worker="w", lease_seconds=LEASE)
    long_ago = utcnow() - timedelta(hours=1)
    session.execute(
        update(Job).where(Job.id == dead.id).values(updated_at=long_ago, lease_expires_at=long_ago)
    )
    session.execute(update(Job).where(Job.id == alive.id).values(updated_at=long_ago))
    session.commit()
    sent: list[uuid.UUID] = []
    reconciler.requeue_stale_jobs(session, older_than_seconds=60, enqueue=sent.append)
    assert dead.id in sent, "an expired lease with no heartbeat: the worker is gone"
    assert alive.id not in sent, "a live lease: the worker is still on it"
    claim = jobs.claim_job(session, dead.id, worker="w2", lease_seconds=LEASE)
    assert claim is not None and claim.attempt == 2


@pytest.mark.parametrize(
    ("iteration", "iterations", "percent"),
    [(0, 10, 0.0), (1, 3, 33.33), (10, 10, 100.0), (12, 10, 100.0), (-1, 10, 0.0), (5, 0, 0.0)],
)
def test_progress_percent(iteration: int, iterations: int, percent: float) -> None:
    assert jobs.progress_percent(iteration, iterations) == percent
