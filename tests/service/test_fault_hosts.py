"""Faults of whole machines, on hosts of their own: network namespaces that the test makes
(``host_network``), one for PostgreSQL, Redis, the object store and the API, one per
worker, one for the test itself (``host_stack``). Each worker is ``stylequeue worker``
on its host; every job file crosses the network to the store.

1. A worker host's link is cut mid-job, after a checkpoint was committed: the job
   resumes on the other host from that checkpoint and succeeds; once the link is back,
   the cut-off worker has stopped without a write (no event of its attempt after the
   other's claim, no object of its attempt left in the bucket) and takes jobs again.
2. A worker host loses only the store mid-job: its checkpoints and previews fail, its
   result cannot be stored, so it hands the job back (``released``, not a dead attempt);
   the job completes on the other host from the last checkpoint in the store.
3. A worker host loses only Redis mid-job: the job goes on (its lease is in the
   database) and succeeds on that host; once Redis is reachable again the worker takes
   the next job.
4. A worker host is cut off in the middle of a database transaction: the server drops
   its session, and the job's row it held, within 16 s.

Lease 4 s, checkpoints every 0.5 s, reconciler every second, a handed-back job sent
again after 3 s (``host_stack.SERVICE_SETTINGS``). Needs root (namespaces) and the
servers' programs: skipped without, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from functools import partial

import pytest
from fault_helpers import FaultReport, fault_report, job_log_events
from host_network import unavailable
from host_stack import REDIS_ADDRESS, STORE_ADDRESS, Fleet, Worker, wait_for
from processes import required
from sqlalchemy import text, update
from sqlalchemy.exc import SQLAlchemyError

from shared.db import Database
from shared.models import Job, JobStatus

pytestmark = pytest.mark.slow

ITERATIONS = 80  # at 32 px, one math thread: about 10-20 s on two busy cores
NEXT_ITERATIONS = 20
# After a partition heals, TCP resends what waited at its backed-off pace (up to
# 120 s between tries): a worker may take that long to hear from Redis again.
BACK_SECONDS = 180.0
LOCK_WAIT_SECONDS = 40  # a row held by a vanished client: how long a writer waits at most
INPUTS = ("content.png", "style-0.png")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = unavailable()
    if reason is not None:
        required(reason)
    running = Fleet(tmp_path_factory.mktemp("hosts"))
    try:
        yield running
    finally:
        running.close()


def running_job(fleet: Fleet) -> tuple[uuid.UUID, Worker]:
    """A job claimed by one of the two idle workers and past its first committed checkpoint
    by a few iterations: the job and that worker."""
    for worker in fleet.workers.values():
        wait_for(f"{worker.host.name} to take jobs", partial(fleet.consuming, worker), BACK_SECONDS)
    job_id = fleet.submit(iterations=ITERATIONS)
    claim = wait_for("the claim", lambda: fleet.claim(job_id, 1))
    checkpoint = wait_for(
        "a checkpoint of attempt 1",
        lambda: [e for e in fleet.events(job_id, "checkpoint") if e.attempt == 1],
    )[0]
    at = int(checkpoint.data["iteration"])
    wait_for("iterations past it", lambda: fleet.row(job_id).iteration >= at + 3)
    return job_id, fleet.worker_of(claim)


def checkpoints(fleet: Fleet, job_id: uuid.UUID, attempt: int) -> list[int]:
    return [
        int(e.data["iteration"]) for e in fleet.events(job_id, "checkpoint") if e.attempt == attempt
    ]


def succeeded(fleet: Fleet, job_id: uuid.UUID) -> bool:
    status = fleet.row(job_id).status
    assert status in {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED}, status
    return status is JobStatus.SUCCEEDED


def assert_the_last_attempts_objects(
    fleet: Fleet, job_id: uuid.UUID, *, others_before: float | None = None
) -> list[str]:
    """The bucket holds the inputs, the result and preview of the attempt that succeeded
    and no checkpoint (the success removes them just after its commit); the API serves
    that result. Nothing of another attempt, unless ``others_before`` (a time): then
    only objects the store wrote before it (a write under way when a host was cut off
    lands unnamed; nothing removes it before retention). The leftovers' names."""
    attempt = fleet.row(job_id).attempts
    own = f".a{attempt}."

    def settled() -> dict[str, float] | None:
        objects = fleet.objects(job_id)
        checkpoint = [name for name in objects if "checkpoint" in name]
        return objects if not checkpoint else None

    objects: dict[str, float] = wait_for("the checkpoints to go", settled, timeout=30)
    others = {n: t for n, t in objects.items() if n not in INPUTS and own not in n}
    late = [n for n, t in others.items() if others_before is None or t > others_before]
    assert late == [], f"objects of other attempts: {sorted(others)}"
    assert f"result.a{attempt}.png" in objects
    assert fleet.result(job_id) == fleet.object(job_id, f"result.a{attempt}.png")
    return sorted(others)


def log_time(line: dict[str, object]) -> float:
    """A JSON log line's time, as seconds since the epoch."""
    return datetime.fromisoformat(str(line["time"])).timestamp()


def print_report(found: FaultReport, name: str, **measured: object) -> None:
    """The fault report's line, the jobs lost (submitted, not succeeded), what was measured."""
    extra = " ".join(f"{key}={value}" for key, value in measured.items())
    print(found.line(name), f"lost={found.submitted - found.completed}", extra)


def test_a_cut_off_host_its_job_resumes_on_the_other_and_it_writes_nothing_after(
    fleet: Fleet,
) -> None:
    job_id, cut_off = running_job(fleet)
    other = fleet.other(cut_off)
    fleet.net.cut(cut_off.host)
    cut_at, cut_wall = time.monotonic(), time.time()
    try:
        # Read after the cut: the last iteration the cut-off worker got through.
        before_cut = fleet.row(job_id).iteration
        second = wait_for("the other host's claim", lambda: fleet.claim(job_id, 2))
        pickup = time.monotonic() - cut_at
        assert fleet.worker_of(second) is other
        wait_for("the job to succeed", lambda: succeeded(fleet, job_id))
        done = time.monotonic() - cut_at
    finally:
        fleet.net.mend(cut_off.host)
    mended_at = time.monotonic()

    row = fleet.row(job_id)
    assert row.attempts == 2 and row.result_file == "result.a2.png"
    [resumed] = fleet.events(job_id, "resumed")
    assert resumed.attempt == 2
    assert resumed.data["iteration"] == checkpoints(fleet, job_id, 1)[-1], "the last in the store"
    # The cut-off worker stopped by itself once the lease it last renewed ran out...
    [stopped] = wait_for(
        "the cut-off worker to give the job up",
        lambda: job_log_events(cut_off.log(), job_id, "lease_lost"),
    )
    stopped_after = log_time(stopped) - cut_wall
    # ...and takes jobs again once its link is back.
    wait_for("the cut-off worker to take jobs", lambda: fleet.consuming(cut_off), BACK_SECONDS)
    back = time.monotonic() - mended_at
    late = [e for e in fleet.events(job_id) if e.attempt == 1 and e.id > second.id]
    assert late == [], "nothing of the cut-off attempt after the other's claim"
    # Nothing of it written after the cut (the listing counts whole seconds).
    leftovers = assert_the_last_attempts_objects(fleet, job_id, others_before=cut_wall + 1)
    found = fault_report(fleet.db, [job_id], stopped_at={job_id: [before_cut]})
    print_report(
        found,
        "hosts-link-cut",
        cut_at_iteration=before_cut,
        resumed_from=resumed.data["iteration"],
        pickup_s=f"{pickup:.1f}",
        succeeded_s=f"{done:.1f}",
        cut_off_stopped_s=f"{stopped_after:.1f}",
        back_after_mend_s=f"{back:.1f}",
        stale_objects_left=len(leftovers),
    )
    assert (found.submitted, found.completed, found.run_twice, found.attempts) == (1, 1, 0, 2)
    assert found.iterations_redone == max(0, before_cut - int(resumed.data["iteration"]))
    assert pickup < 4 + 30  # the lease, then the reconciler's next run


def test_a_host_that_loses_only_the_store_hands_its_job_back_to_the_other(
    fleet: Fleet,
) -> None:
    job_id, cut_off = running_job(fleet)
    other = fleet.other(cut_off)
    fleet.net.blackhole(cut_off.host, STORE_ADDRESS)
    cut_at = time.monotonic()
    try:
        handed_back = wait_for(
            "the hand-back",
            lambda: [e for e in fleet.events(job_id, "released") if e.attempt == 1],
        )[0]
        released = time.monotonic() - cut_at
        wait_for("the job to succeed", lambda: succeeded(fleet, job_id))
        done = time.monotonic() - cut_at
    finally:
        fleet.net.unblock(cut_off.host, STORE_ADDRESS)

    assert handed_back.data["reason"] == "storage_unavailable"
    row = fleet.row(job_id)
    last = fleet.claim(job_id, row.attempts)
    assert last is not None and fleet.worker_of(last) is other
    # Once: the cut-off host, whose storage failed, claims nothing until it answers again
    # (it passes a job on), so the second attempt is the other host's.
    assert row.attempts == 2, [(c.attempt, c.worker) for c in fleet.events(job_id, "claimed")]
    # The attempt before it was the cut-off host's, handed back for the storage at its
    # end: none died, none failed.
    for attempt in range(1, row.attempts):
        claim = fleet.claim(job_id, attempt)
        assert claim is not None and fleet.worker_of(claim) is cut_off
        [back] = [e for e in fleet.events(job_id, "released") if e.attempt == attempt]
        assert back.data["reason"] == "storage_unavailable"
    assert not fleet.events(job_id, "worker_lost") and not fleet.events(job_id, "failed")
    [resumed] = fleet.events(job_id, "resumed")
    assert resumed.attempt == row.attempts
    assert resumed.data["iteration"] == checkpoints(fleet, job_id, 1)[-1], "the last in the store"
    assert_the_last_attempts_objects(fleet, job_id)
    found = fault_report(fleet.db, [job_id])
    print_report(
        found,
        "hosts-store-lost",
        handed_back_at=handed_back.data["iteration"],
        resumed_from=resumed.data["iteration"],
        released_s=f"{released:.1f}",
        succeeded_s=f"{done:.1f}",
    )
    assert (found.submitted, found.completed, found.run_twice) == (1, 1, 0)


def test_a_host_that_loses_only_redis_finishes_its_job_and_takes_the_next(
    fleet: Fleet,
) -> None:
    job_id, cut_off = running_job(fleet)
    other = fleet.other(cut_off)
    fleet.net.blackhole(cut_off.host, REDIS_ADDRESS)
    cut_at = time.monotonic()
    try:
        # Submitted during the outage: only the other host hears of it.
        meanwhile = fleet.submit(iterations=NEXT_ITERATIONS)
        wait_for("the job to succeed", lambda: succeeded(fleet, job_id))
        done = time.monotonic() - cut_at
        wait_for("the other job to succeed", lambda: succeeded(fleet, meanwhile))
    finally:
        fleet.net.unblock(cut_off.host, REDIS_ADDRESS)
    unblocked_at = time.monotonic()

    row = fleet.row(job_id)
    claim = fleet.claim(job_id, 1)
    assert row.attempts == 1 and claim is not None and fleet.worker_of(claim) is cut_off
    assert row.result_file == "result.a1.png"
    assert not fleet.events(job_id, "requeued"), "its lease never ran out"
    assert not job_log_events(cut_off.log(), job_id, "heartbeat_failed")
    other_claim = fleet.claim(meanwhile, 1)
    assert other_claim is not None and fleet.worker_of(other_claim) is other

    wait_for("the worker to take jobs again", lambda: fleet.consuming(cut_off), BACK_SECONDS)
    back = time.monotonic() - unblocked_at
    # Both workers wait for a message: two jobs, one each.
    following = [fleet.submit(iterations=NEXT_ITERATIONS) for _ in range(2)]
    for next_id in following:
        wait_for("the next job to succeed", partial(succeeded, fleet, next_id))
    takers = {fleet.worker_of(c) for n in following if (c := fleet.claim(n, 1)) is not None}
    assert takers == {cut_off, other}
    assert_the_last_attempts_objects(fleet, job_id)
    found = fault_report(fleet.db, [job_id, meanwhile, *following])
    print_report(
        found,
        "hosts-redis-lost",
        succeeded_s=f"{done:.1f}",
        back_after_unblock_s=f"{back:.1f}",
    )
    assert (found.submitted, found.completed, found.run_twice, found.attempts) == (4, 4, 0, 4)


def test_a_host_cut_off_inside_a_transaction_holds_a_jobs_row_only_briefly(
    fleet: Fleet,
) -> None:
    """A worker machine lost between a statement and its COMMIT (a heartbeat's UPDATE, a
    checkpoint's) leaves its session holding the job's row, and the server's answer to
    that statement unacknowledged. PostgreSQL learns that a client is gone only from
    TCP; every stylequeue connection sets the server's side short
    (``shared.db.SERVER_TCP_SETTINGS``: 16 s), so the row is free again within a lease,
    for the next claim and the reconciler's sweep, instead of after the kernel's 15
    minutes of resending."""
    job_id = fleet.submit(iterations=NEXT_ITERATIONS)
    wait_for("the job to succeed", lambda: succeeded(fleet, job_id))
    host = fleet.hosts["w1"]
    holding, finish = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold_the_row() -> None:
        # A stylequeue session on the worker's host, in the middle of its transaction.
        try:
            with fleet.net.entered(host):
                db = Database(fleet.postgres.url)
                try:
                    with db.session() as session:
                        session.execute(
                            update(Job).where(Job.id == job_id).values(updated_at=Job.updated_at)
                        )
                        holding.set()
                        finish.wait(LOCK_WAIT_SECONDS + 60)
                        with contextlib.suppress(SQLAlchemyError):
                            session.rollback()
                finally:
                    with contextlib.suppress(SQLAlchemyError):
                        db.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
            holding.set()

    holder = threading.Thread(target=hold_the_row, name="holds-a-row")
    holder.start()
    try:
        assert holding.wait(30) and not failures, failures
        fleet.net.cut(host)
        cut_at = time.monotonic()
        try:
            with fleet.db.session() as session:
                # Without the settings this waits for as long as the cut lasts (for a
                # machine that is gone, about 15 minutes): the lock timeout says so.
                session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
                session.execute(
                    update(Job).where(Job.id == job_id).values(updated_at=Job.updated_at)
                )
                session.commit()
            freed = time.monotonic() - cut_at
        finally:
            fleet.net.mend(host)
    finally:
        finish.set()
        holder.join(60)
    print(f"FAULT REPORT hosts-cut-inside-a-transaction: row_free_after_s={freed:.1f}")
    assert freed < 16 + 14  # the server's 16 s, and slack for a busy machine
