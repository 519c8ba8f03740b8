"""Faults: a worker killed with SIGKILL mid-job. The job is picked up again and
completes, resumed from its last checkpoint; a job whose workers keep dying fails with
``too_many_attempts`` after STYLEQUEUE_MAX_ATTEMPTS deaths instead of looping.

Real ``celery worker`` process groups (prefork, one pool process each) and the real
reconciler: a ``stylequeue scheduler`` process (celery beat + its solo worker, the
command production runs) every second. Short lease and checkpoint interval; the
requeue-after period keeps its default (300 s): a dead worker's job must not wait for it.

The three tests share one scheduler and their workers (a worker takes seconds to start
and load VGG19): the first kills one of two workers, the next two kill the pool
process of the survivor. Each starts what it lacks, so any of them also runs alone.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import service_helpers
from fault_helpers import WorkerProcess, fault_report, job_log_events, log_lines
from lease_cluster import LeaseCluster, pool_pid
from service_helpers import store_job
from sqlalchemy import select

from shared.celery_app import RECONCILE_TASK, enqueue_job
from shared.images import decode_image
from shared.models import JobEvent, JobStatus, Worker

pytestmark = pytest.mark.slow

SIZE = 32
ITERATIONS = 150  # at 32 px: a few seconds of work on a quiet machine
LEASE_SECONDS = 4
MAX_ATTEMPTS = 3  # the default, set here so that the test says what it counts
WAIT_SECONDS = 90.0


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.05)


class Cluster(LeaseCluster):
    """One scheduler, the live workers, and the database they share, for this module."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir)
        self._started = 0

    def live_workers(self, count: int) -> list[WorkerProcess]:
        """At least ``count`` running workers (started side by side when missing)."""
        self.workers = [w for w in self.workers if w.process.poll() is None]
        missing = count - len(self.workers)
        if missing > 0:
            names = [f"w{self._started + i}" for i in range(missing)]
            self._started += missing
            with ThreadPoolExecutor(missing) as pool:
                started = list(
                    pool.map(
                        lambda name: WorkerProcess(self.env, self.log_dir / f"{name}.log", name),
                        names,
                    )
                )
            self.workers += started
        return self.workers[:count]

    def submit_job(self, iterations: int = ITERATIONS) -> uuid.UUID:
        with self.db.session() as session:
            return store_job(
                session,
                self.storage,
                self.client_id,
                iterations=iterations,
                size=SIZE,
                enqueue=lambda job_id: enqueue_job(self.celery, job_id),
            )

    def worker_of(self, claim: JobEvent) -> tuple[WorkerProcess, int]:
        """The worker whose pool process made this claim, and that process's pid."""
        pid = pool_pid(claim)
        assert claim.data["hostname"] == socket.gethostname()
        parent = parent_pid(pid)
        [worker] = [w for w in self.workers if w.process.pid == parent]
        assert claim.worker == worker.node_name, "the claim names the worker's Celery node"
        return worker, pid

    def scheduler_log(self) -> str:
        return (self.log_dir / "scheduler.log").read_text(errors="replace")

    def reconciler_runs(self) -> int:
        """How many reconciler runs have ended: Celery's line for each task the
        scheduler's worker finished, in its JSON log."""
        return sum(
            line.get("logger") == "celery.app.trace"
            and f"{RECONCILE_TASK}[" in line["message"]
            and " succeeded in " in line["message"]
            for line in log_lines(self.scheduler_log())
        )

    def registered_pool_processes(self, worker: WorkerProcess) -> set[int]:
        """The worker's pool processes alive now that have loaded the network (its one row
        in the workers registry names the process)."""
        # Each thread's children: the pool process is forked by whichever thread
        # maintains the pool.
        threads = Path(f"/proc/{worker.process.pid}/task").glob("*/children")
        pids = {int(pid) for children in threads for pid in children.read_text().split()}
        with self.db.session() as session:
            rows = session.scalars(select(Worker).where(Worker.name == worker.node_name)).all()
        assert len(rows) <= 1
        return {row.pid for row in rows if row.hostname == socket.gethostname()} & pids


def parent_pid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, not ")".
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def cluster(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("sigkill")
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}sigkill:",
        "STYLEQUEUE_DATA_DIR": str(tmp / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_LEASE_SECONDS": str(LEASE_SECONDS),
        "STYLEQUEUE_CHECKPOINT_SECONDS": "0.5",
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
        "STYLEQUEUE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "STYLEQUEUE_LOG_FORMAT": "json",  # the tests read the scheduler's lines by their fields
        # One thread per worker: two workers (and the test machine's other work) on
        # few cores otherwise spin against each other, several times slower.
        "OMP_NUM_THREADS": "1",
    }
    running = Cluster(env, tmp)
    try:
        yield running
    finally:
        running.close()


def wait_for_checkpoint_and_more(cluster: Cluster, job_id: uuid.UUID, attempt: int) -> int:
    """Wait for a checkpoint of ``attempt`` and some iterations past it; the row's iteration."""
    checkpoint = wait_for(
        f"a checkpoint of attempt {attempt}",
        lambda: [e for e in cluster.events(job_id, "checkpoint") if e.attempt == attempt],
    )[-1]
    at = int(checkpoint.data["iteration"])
    return int(
        wait_for(
            "iterations past the checkpoint",
            lambda: (i := cluster.row(job_id).iteration) > at + 10 and i,
        )
    )


def assert_result(cluster: Cluster, job_id: uuid.UUID) -> None:
    row = cluster.row(job_id)
    assert row.status is JobStatus.SUCCEEDED and row.iteration == ITERATIONS
    assert row.result_file == f"result.a{row.attempts}.png", "the finishing attempt's"
    image = decode_image(cluster.storage.get(job_id, row.result_file), field="result")
    assert max(image.size) == SIZE
    assert not checkpoint_files(cluster, job_id)


def checkpoint_files(cluster: Cluster, job_id: uuid.UUID) -> list[str]:
    return [p.name for p in cluster.storage.job_dir(job_id).iterdir() if "checkpoint" in p.name]


def assert_pool_processes_started_cleanly(worker: WorkerProcess) -> None:
    # A restarted pool process loads VGG19 first: Celery must wait for it rather
    # than kill it after its default 4 s (POOL_PROCESS_START_SECONDS).
    assert "Timed out waiting for UP message" not in worker.log()


def test_sigkill_of_a_whole_worker_another_worker_resumes_the_job(cluster: Cluster) -> None:
    cluster.live_workers(2)
    job_id = cluster.submit_job()
    first_claim = wait_for("the claim", lambda: cluster.claim(job_id, 1))
    first, _ = cluster.worker_of(first_claim)
    iteration = wait_for_checkpoint_and_more(cluster, job_id, 1)
    first.kill(signal.SIGKILL)  # main process and pool process at once: nothing is handed back
    killed_at = time.monotonic()
    # Read after the kill: the last iteration the dead worker recorded, which nothing changes
    # now (read before it, a heartbeat or a checkpoint could still land in between).
    before_kill = cluster.row(job_id).iteration
    assert iteration <= before_kill < ITERATIONS

    second_claim = wait_for("the retry's claim", lambda: cluster.claim(job_id, 2))
    pickup = time.monotonic() - killed_at
    second, _ = cluster.worker_of(second_claim)
    assert second is not first
    wait_for("the job to succeed", lambda: cluster.row(job_id).status.is_finished)
    assert_result(cluster, job_id)

    claims = cluster.events(job_id, "claimed")
    assert [(c.attempt, c.worker) for c in claims] == [
        (1, first_claim.worker),
        (2, second_claim.worker),
    ]
    [resumed] = cluster.events(job_id, "resumed")
    checkpoints = [e for e in cluster.events(job_id, "checkpoint") if e.attempt == 1]
    assert resumed.attempt == 2
    assert resumed.data["iteration"] == checkpoints[-1].data["iteration"], "the last checkpoint"
    assert cluster.events(job_id, "requeued"), "the reconciler re-sent it"
    assert job_log_events(cluster.scheduler_log(), job_id, "requeued"), "and logged it"
    assert "VGG19" not in cluster.scheduler_log(), "the scheduler runs no job"
    assert cluster.row(job_id).attempts == 2
    report = fault_report(cluster.db, [job_id], stopped_at={job_id: [before_kill]})
    print(
        report.line("sigkill-worker"),
        f"killed_at={before_kill} resumed_from={resumed.data['iteration']} pickup_s={pickup:.1f}",
    )
    assert (report.submitted, report.completed, report.run_twice, report.attempts) == (1, 1, 0, 2)
    # The row's iteration trails the engine's by up to a heartbeat, so a checkpoint taken
    # in that gap resumes past it: nothing redone, not a negative amount.
    assert report.iterations_redone == max(0, before_kill - resumed.data["iteration"])
    # Lease expiry, then the first reconciler run: not STYLEQUEUE_REQUEUE_AFTER_SECONDS (300).
    assert pickup < LEASE_SECONDS + 30


def test_sigkill_of_the_pool_process_the_restarted_one_resumes_the_job(cluster: Cluster) -> None:
    [worker] = cluster.live_workers(1)
    job_id = cluster.submit_job()
    first_claim = wait_for("the claim", lambda: cluster.claim(job_id, 1))
    owner, pid = cluster.worker_of(first_claim)
    assert owner is worker
    wait_for_checkpoint_and_more(cluster, job_id, 1)
    before_kill = cluster.row(job_id).iteration
    os.kill(pid, signal.SIGKILL)  # the pool process alone: the main process restarts one
    killed_at = time.monotonic()
    second_claim = wait_for("the retry's claim", lambda: cluster.claim(job_id, 2))
    pickup = time.monotonic() - killed_at

    wait_for("the job to succeed", lambda: cluster.row(job_id).status.is_finished)
    assert_result(cluster, job_id)
    assert worker.process.poll() is None, "the worker itself lives on"
    assert_pool_processes_started_cleanly(worker)
    claims = cluster.events(job_id, "claimed")
    assert [c.attempt for c in claims] == [1, 2]
    assert claims[1].id == second_claim.id
    again, new_pid = cluster.worker_of(claims[1])
    assert again is worker and new_pid != pid, "the same worker's restarted pool process"
    assert claims[0].worker == claims[1].worker == worker.node_name, "under the same name"
    # The main process ended the dead pool process's lease (before requeueing the message).
    [lost] = cluster.events(job_id, "worker_lost")
    assert (lost.attempt, lost.worker, lost.data["pid"]) == (1, worker.node_name, pid)
    assert lost.id < claims[1].id
    [resumed] = cluster.events(job_id, "resumed")
    assert resumed.attempt == 2 and resumed.data["iteration"] > 0
    report = fault_report(cluster.db, [job_id], stopped_at={job_id: [before_kill]})
    print(
        report.line("sigkill-pool-process"),
        f"killed_at={before_kill} resumed_from={resumed.data['iteration']} pickup_s={pickup:.1f}",
    )
    assert (report.submitted, report.completed, report.run_twice, report.attempts) == (1, 1, 0, 2)


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(cluster: Cluster) -> None:
    [worker] = cluster.live_workers(1)
    job_id = cluster.submit_job(iterations=5000)  # the most allowed: it never gets far here
    pids = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = wait_for(f"claim {attempt}", lambda a=attempt: cluster.claim(job_id, a))
        owner, pid = cluster.worker_of(claim)
        assert owner is worker
        os.kill(pid, signal.SIGKILL)
        pids.append(pid)

    wait_for("the job to fail", lambda: cluster.row(job_id).status.is_finished)
    row = cluster.row(job_id)
    assert row.status is JobStatus.FAILED and row.error_code == "too_many_attempts"
    assert row.error_message is not None
    assert f"{MAX_ATTEMPTS} attempts" in row.error_message
    assert worker.node_name in row.error_message, "it names the last worker"
    assert row.attempts == MAX_ATTEMPTS
    assert not checkpoint_files(cluster, job_id) and row.checkpoint_file is None
    [failed] = cluster.events(job_id, "failed")
    assert failed.data["died"] == MAX_ATTEMPTS

    # Three reconciler runs that began after the failure (the one under way may not
    # have seen it), and the worker's restarted pool process is up.
    runs = cluster.reconciler_runs()
    wait_for("three more reconciler runs", lambda: cluster.reconciler_runs() >= runs + 4)
    wait_for(
        "the restarted pool process",
        lambda: cluster.registered_pool_processes(worker) - set(pids),
    )
    assert cluster.row(job_id).status is JobStatus.FAILED
    assert_pool_processes_started_cleanly(worker)
    claims = cluster.events(job_id, "claimed")
    assert [c.attempt for c in claims] == list(range(1, MAX_ATTEMPTS + 1)), "nothing loops"
    report = fault_report(cluster.db, [job_id])
    print(report.line("sigkill-max-attempts"))
    assert (report.submitted, report.completed, report.run_twice) == (1, 0, 0)
    assert report.attempts == MAX_ATTEMPTS
