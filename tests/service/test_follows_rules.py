"""In-flight sharing's rules on a real database (PostgreSQL and SQLite), without a worker:
who follows whom at submit, that a follower is never claimed nor re-sent, that its row
shows its leader's progress, that it is canceled alone, and the reconciler's repair of
a follower whose leader ended without settling it (succeeded, failed, canceled)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import follows, jobs, leases, reconciler, submissions, webhook_outbox
from shared.auth import create_client
from shared.job_view import JobView
from shared.models import EventKind, Job, JobEvent, JobStatus, utcnow
from shared.params import parse_params
from shared.result_cache import CacheRequest
from shared.storage import LocalStorage, checkpoint_file, result_file
from shared.webhooks import WebhookRequest

LEASE = 30.0
CONTENT = b"content bytes"
STYLE = b"style bytes"
RESULT = b"the leader's result"


def submit(
    session: Session,
    storage: LocalStorage,
    client_id: int,
    *,
    serve: bool = True,
    scope: str = "client",
    seed: int = 1,
    sent: list[uuid.UUID] | None = None,
) -> JobView:
    job, created = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": 32, "iterations": 10, "seed": seed}),
        content=CONTENT,
        styles=[STYLE],
        idempotency_key=None,
        enqueue=(sent if sent is not None else []).append,
        cache=CacheRequest(serve=serve, scope=scope, weights="test-weights"),  # type: ignore[arg-type]
    )
    assert created
    return job


def row(session: Session, job_id: uuid.UUID) -> Job:
    session.expire_all()
    found = session.get(Job, job_id)
    assert found is not None
    return found


def kinds(session: Session, job_id: uuid.UUID) -> list[str]:
    return list(
        session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
    )


@pytest.fixture
def client_id(session: Session) -> int:
    client, _ = create_client(session, "follows")
    return client.id


def test_an_identical_job_follows_the_queued_one_and_is_never_sent_claimed_or_resent(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    sent: list[uuid.UUID] = []
    leader = submit(session, storage, client_id, sent=sent)
    follower = submit(session, storage, client_id, sent=sent)
    other_params = submit(session, storage, client_id, seed=2, sent=sent)
    opted_out = submit(session, storage, client_id, serve=False, sent=sent)
    other, _ = create_client(session, "follows-other")
    other_client = submit(session, storage, other.id, sent=sent)
    everyone = submit(session, storage, other.id, scope="global", sent=sent)

    assert leader.follows is None and follower.follows == leader.id
    assert other_params.follows is None and opted_out.follows is None
    assert other_client.follows is None, "the client scope never looks at another's jobs"
    assert everyone.follows == leader.id, "the global scope shares any client's run"
    assert follower.id not in sent and everyone.id not in sent
    assert set(sent) == {leader.id, other_params.id, opted_out.id, other_client.id}
    assert kinds(session, follower.id) == [EventKind.CREATED, EventKind.FOLLOWING]
    assert kinds(session, leader.id).count(EventKind.FOLLOWED_BY) == 2

    assert jobs.claim_job(session, follower.id, worker="w/1", lease_seconds=LEASE) is None
    session.execute(
        update(Job)
        .values(updated_at=utcnow() - timedelta(hours=1))
        .where(Job.id.in_([*sent, follower.id, everyone.id]))
    )
    session.commit()
    resent = reconciler.requeue_stale_jobs(session, older_than_seconds=60, enqueue=lambda _: None)
    assert follower.id not in resent and everyone.id not in resent
    assert leader.id in resent


def test_a_follower_shows_its_leaders_status_and_progress_and_is_canceled_alone(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    follower = submit(session, storage, client_id)
    claim = jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE)
    assert claim is not None
    assert row(session, follower.id).status is JobStatus.RUNNING
    assert row(session, follower.id).started_at is not None
    leases.heartbeat(
        session, claim, iteration=4, iterations=10, eta_seconds=1.5, lease_seconds=LEASE
    )
    shown = row(session, follower.id)
    assert (shown.iteration, shown.percent, shown.eta_seconds) == (4, 40.0, 1.5)
    assert shown.attempts == 0 and shown.worker is None and shown.lease_owner is None

    canceled = jobs.cancel_job(session, follower.id, client_id=client_id)
    assert canceled.status is JobStatus.CANCELED and not canceled.cancel_requested
    assert row(session, leader.id).status is JobStatus.RUNNING
    assert not row(session, leader.id).cancel_requested
    leases.heartbeat(
        session, claim, iteration=6, iterations=10, eta_seconds=1.0, lease_seconds=LEASE
    )
    assert row(session, follower.id).iteration == 4, "a canceled follower follows no more"


def test_a_running_follower_past_its_deadline_is_canceled_and_its_leader_goes_on(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    follower = submit(session, storage, client_id)
    assert jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE) is not None
    session.execute(
        update(Job).values(deadline_at=utcnow() - timedelta(seconds=1)).where(Job.id == follower.id)
    )
    session.commit()
    assert reconciler.cancel_jobs_past_deadline(session, storage) == [follower.id]
    assert row(session, follower.id).error_code == "deadline_exceeded"
    assert row(session, leader.id).status is JobStatus.RUNNING


def test_the_sweep_gives_each_follower_of_a_succeeded_leader_its_own_copy_once(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    first = submit(session, storage, client_id)
    second = submit(session, storage, client_id)
    claim = jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE)
    assert claim is not None
    storage.put(leader.id, result_file(1), RESULT)
    jobs.finish_job(session, claim, result_file=result_file(1))  # its worker died right here
    assert row(session, first.id).status is JobStatus.RUNNING

    assert follows.settle_orphaned_followers(session, storage) == []
    for follower in (first, second):
        done = row(session, follower.id)
        assert done.status is JobStatus.SUCCEEDED and done.percent == 100.0
        assert done.follows == leader.id, "the timeline keeps which job ran it"
        assert storage.get(follower.id, follows.SHARED_RESULT_FILE) == RESULT
        assert done.result_file == follows.SHARED_RESULT_FILE
        assert kinds(session, follower.id)[-1] == EventKind.SUCCEEDED
    assert follows.settle_orphaned_followers(session, storage) == []
    assert kinds(session, first.id).count(EventKind.SUCCEEDED) == 1


def test_the_sweep_fails_the_followers_of_a_failed_leader_with_its_error(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    follower = submit(session, storage, client_id)
    claim = jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE)
    assert claim is not None
    jobs.fail_job(session, claim, code="engine_error", message="it broke")
    follows.settle_orphaned_followers(session, storage)
    failed = row(session, follower.id)
    assert failed.status is JobStatus.FAILED
    assert (failed.error_code, failed.error_message) == ("engine_error", "it broke")


def test_the_sweep_promotes_the_oldest_follower_of_a_canceled_leader_with_its_checkpoint(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    first = submit(session, storage, client_id)
    second = submit(session, storage, client_id)
    claim = jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE)
    assert claim is not None
    name = checkpoint_file(1, 5)
    storage.put(leader.id, name, b"state at 5")
    jobs.release_job(session, claim, iteration=5, checkpoint_file=name)  # handed back queued
    assert row(session, first.id).status is JobStatus.QUEUED
    jobs.cancel_job(session, leader.id, client_id=client_id)  # its API died right here

    assert follows.settle_orphaned_followers(session, storage) == [first.id]
    promoted = row(session, first.id)
    assert promoted.follows is None and promoted.status is JobStatus.QUEUED
    assert promoted.checkpoint_file == checkpoint_file(0, 5)
    assert storage.get(first.id, checkpoint_file(0, 5)) == b"state at 5"
    assert kinds(session, first.id)[-1] == EventKind.PROMOTED
    assert row(session, second.id).follows == first.id
    assert follows.settle_orphaned_followers(session, storage) == []
    claimed = jobs.claim_job(session, first.id, worker="w/2", lease_seconds=LEASE)
    assert claimed is not None and claimed.checkpoint_file == checkpoint_file(0, 5)
    assert row(session, second.id).status is JobStatus.RUNNING


def test_a_follower_whose_leader_ended_before_its_commit_is_settled_by_the_submit(
    session: Session, storage: LocalStorage, client_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = submit(session, storage, client_id)
    real_find = follows.find_leader

    def found_then_canceled(
        session: Session, key: str, client: int | None, db: Any = None
    ) -> uuid.UUID | None:
        found = real_find(session, key, client, db)
        jobs.cancel_job(session, leader.id, client_id=None)  # between the lookup and the row
        return found

    sent: list[uuid.UUID] = []
    monkeypatch.setattr(follows, "find_leader", found_then_canceled)
    late = submit(session, storage, client_id, sent=sent)
    assert late.follows == leader.id
    assert row(session, late.id).follows is None and sent == [late.id]


def test_a_followers_webhook_hears_its_leaders_start_progress_and_its_own_end(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    leader = submit(session, storage, client_id)
    follower, created = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": 32, "iterations": 10, "seed": 1}),
        content=CONTENT,
        styles=[STYLE],
        idempotency_key=None,
        enqueue=[].append,
        cache=CacheRequest(serve=True, scope="client", weights="test-weights"),  # type: ignore[arg-type]
        webhook=WebhookRequest("https://hooks.example.com/x", ("start", "progress", "completed")),
    )
    assert created and follower.follows == leader.id
    claim = jobs.claim_job(session, leader.id, worker="w/1", lease_seconds=LEASE)
    assert claim is not None
    leases.heartbeat(
        session, claim, iteration=3, iterations=10, eta_seconds=1.0, lease_seconds=LEASE
    )
    storage.put(leader.id, result_file(1), RESULT)
    jobs.finish_job(session, claim, result_file=result_file(1))
    assert follows.settle_orphaned_followers(session, storage) == []
    sent = webhook_outbox.list_deliveries(session, follower.id)
    assert [d.event for d in sent] == ["start", "progress", "completed"]
    bodies = [json.loads(d.body or "{}") for d in sent]
    assert [b.get("status") for b in bodies] == ["running", "running", "succeeded"]
    assert bodies[1]["progress"]["iteration"] == 3 and bodies[1]["shared"] is True
    assert webhook_outbox.list_deliveries(session, leader.id) == []  # it asked for none
