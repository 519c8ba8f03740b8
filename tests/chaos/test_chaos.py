"""Chaos: a stream of jobs through the public API while real processes are hurt at random.

Every process is real and separate: the API (gunicorn), three ``celery worker``
process groups, the ``stylequeue scheduler`` (the reconciler, every second), a
Redis of the test's own and a PostgreSQL database of its own. Short lease (4 s),
heartbeat and checkpoint intervals. Meanwhile, on a schedule drawn from one seed:
a whole worker SIGKILLed (and replaced), a pool process SIGKILLed, a worker paused
with SIGSTOP for longer than the lease then continued, a pool process stopped just
before its next result, checkpoint or preview write (the workers' fault hook) and
continued past the lease, Redis killed (and started again a few seconds later) or
flushed, the API SIGKILLed (and started again). Jobs stream in all along, a few unfinished at a time so that every worker is busy; the
client cancels some of them.

Everything is checked through HTTP only (the client endpoints and the admin API's
job timeline): every accepted job finishes; no two attempts of a job overlap; no
attempt that had lost its lease writes anything; a result never changes once
downloaded; a canceled job has no result. ``CHAOS_SEED=N`` replays a run's
schedule (the interleaving of the processes differs from run to run).
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from chaos_client import ChaosClient, PlannedJob
from chaos_report import chaos_report
from chaos_stack import ChaosStack
from processes import required
from test_fault_redis import REDIS_SERVER

from shared.auth import create_client
from shared.db import Database
from worker.fault_hooks import PAUSE_FILE_VARIABLE

SEED_VARIABLE = "CHAOS_SEED"
LEASE_SECONDS = 4.0
# Three: a job cut off by a fault finds another worker to take it over while one more
# is busy or restarting (a killed worker takes seconds to load VGG19 again).
WORKERS = 3
# Jobs are submitted until the last fault, with this many unfinished at a time: every
# worker busy (and one or two waiting) on a quiet machine or a loaded one.
IN_FLIGHT = WORKERS + 2
MAX_JOBS = 400
MIN_JOBS = 12  # fewer accepted than this: the run proved little (the API was down?)
# 30 iterations at 32 px: about 0.6 s on a quiet core, 4 s on a loaded one.
ITERATIONS = (30, 150)
N_FAULTS = 14
WRITES = ("result", "checkpoint", "preview")  # where a stall at a write may stop a worker
FAULTS_FROM, FAULTS_TO = 5.0, 80.0  # the faults' times, seconds after the chaos began
DRAIN_SECONDS = 150.0  # after the last fault, every job must have finished by then
IMAGES = ("tubingen", "chelsea", "coffee", "astronaut", "shipwreck")
STYLES = ("starry_night", "woman-with-hat-matisse", "shipwreck")
# Each kind at least once, the rest drawn with these weights.
FAULT_WEIGHTS = {
    "worker_kill": 2,
    "pool_kill": 2,
    "pause": 3,
    "stall_at_write": 3,
    "redis_kill": 1,
    "redis_flush": 1,
    "api_kill": 2,
}


@dataclass(frozen=True)
class PlannedFault:
    at: float
    kind: str
    pick: float  # which target, among those there are then
    seconds: float  # how long a pause or a stall lasts, or Redis stays down
    write: str = ""  # the write a stall stops before


def make_plan(seed: int) -> tuple[list[PlannedJob], list[PlannedFault]]:
    """The jobs (more than will be sent) and the faults, all drawn from ``seed``."""
    jobs_rng = random.Random(f"jobs-{seed}")
    jobs = [
        PlannedJob(
            index=i,
            content=jobs_rng.choice(IMAGES),
            style=jobs_rng.choice(STYLES),
            size=jobs_rng.choice((24, 32)),
            iterations=jobs_rng.randint(*ITERATIONS),
            cancel_after=jobs_rng.uniform(0.5, 5.0) if jobs_rng.random() < 0.15 else None,
        )
        for i in range(MAX_JOBS)
    ]
    rng = random.Random(f"faults-{seed}")
    kinds = list(FAULT_WEIGHTS)
    kinds += rng.choices(kinds, weights=list(FAULT_WEIGHTS.values()), k=N_FAULTS - len(kinds))
    rng.shuffle(kinds)
    gap = (FAULTS_TO - FAULTS_FROM) / N_FAULTS
    faults = []
    for i, kind in enumerate(kinds):
        seconds, write = 0.0, ""
        if kind in ("pause", "stall_at_write"):
            seconds = LEASE_SECONDS + rng.uniform(3.0, 9.0)
            write = rng.choice(WRITES) if kind == "stall_at_write" else ""
        elif kind == "redis_kill":
            seconds = rng.uniform(1.0, 5.0)
        at = FAULTS_FROM + gap * i + rng.uniform(0, gap * 0.8)
        faults.append(PlannedFault(at, kind, rng.random(), seconds, write))
    return jobs, faults


Action = Callable[[], None]
Queue = list[tuple[float, int, Action]]


def run_faults(stack: ChaosStack, plan: list[PlannedFault], clock: Callable[[], float]) -> None:
    """Each fault at its time; a pause's SIGCONT and a Redis restart when they are due."""
    queue: Queue = []
    order = itertools.count()
    for fault in plan:
        inject: Action = partial(_inject, stack, fault, queue, order, clock)
        heapq.heappush(queue, (fault.at, next(order), inject))
    while queue:
        at, _, action = heapq.heappop(queue)
        while clock() < at:
            time.sleep(0.02)
        action()


def _inject(
    stack: ChaosStack,
    fault: PlannedFault,
    queue: Queue,
    order: Iterator[int],
    clock: Callable[[], float],
) -> None:
    undo: Action | None = None
    if fault.kind == "worker_kill":
        stack.kill_worker(fault.pick)
    elif fault.kind == "pool_kill":
        stack.kill_pool_process(fault.pick)
    elif fault.kind == "pause":
        undo = stack.pause_worker(fault.pick, fault.seconds)
    elif fault.kind == "stall_at_write":
        stack.stall_at_write(fault.write, fault.seconds)
    elif fault.kind == "redis_kill":
        undo = stack.kill_redis(fault.seconds)
    elif fault.kind == "redis_flush":
        stack.flush_redis()
    elif fault.kind == "api_kill":
        stack.kill_api()
    else:
        raise AssertionError(f"unknown fault {fault.kind}")
    if undo is not None:
        heapq.heappush(queue, (clock() + fault.seconds, next(order), undo))


def chaos_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "STYLEQUEUE_DATABASE_URL": database_url,
        "STYLEQUEUE_REDIS_PREFIX": "sq_chaos:",
        "STYLEQUEUE_DATA_DIR": str(data_dir),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_LEASE_SECONDS": str(LEASE_SECONDS),
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_PREVIEW_SECONDS": "0.5",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "0.5",
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
        # Far more than the faults can cost one job: an attempt cut off by a pause or a
        # kill counts as one whose worker died, and the test wants every job to finish.
        "STYLEQUEUE_MAX_ATTEMPTS": "50",
        # The queued-job safety net, scaled down like the lease (120 s -> 4 s).
        "STYLEQUEUE_REQUEUE_AFTER_SECONDS": "20",
        PAUSE_FILE_VARIABLE: str(data_dir.parent / "pause-before-write"),
        "OMP_NUM_THREADS": "1",  # three workers, the API and the test on two cores
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_every_job_finishes_once_and_no_stale_attempt_writes(
    chaos_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not os.access(REDIS_SERVER, os.X_OK):
        required("redis-server is needed (apt-get install redis-server)")
    seed = int(os.environ.get(SEED_VARIABLE) or secrets.randbelow(1_000_000))
    print(f"chaos seed {seed} ({SEED_VARIABLE}={seed} replays this schedule)")
    job_plan, fault_plan = make_plan(seed)
    print(
        "faults planned: "
        + ", ".join(f"{f.at:.0f}s {f.kind}" for f in sorted(fault_plan, key=lambda f: f.at))
    )
    root = tmp_path_factory.mktemp("chaos")
    env = chaos_env(chaos_database, root / "data")
    db = Database(chaos_database)
    try:
        with db.session() as session:
            _, key = create_client(session, "chaos")
            _, admin_key = create_client(session, "chaos-admin", is_admin=True)
    finally:
        db.dispose()

    started = time.monotonic()
    stack = ChaosStack(env, root, workers=WORKERS)
    stack.admin_key = admin_key
    print(f"stack up in {time.monotonic() - started:.1f} s; logs in {root}")
    chaos_began = time.monotonic()

    def clock() -> float:
        return time.monotonic() - chaos_began

    stack.t0 = chaos_began  # the fault log's times on the same clock
    client = ChaosClient(stack.base_url, key, admin_key, seed, clock)
    submitter = threading.Thread(
        target=client.submit_all,
        args=(job_plan,),
        kwargs={"until": FAULTS_TO, "in_flight": IN_FLIGHT},
        daemon=True,
    )
    poller = threading.Thread(target=client.poll_until_stopped, daemon=True)
    try:
        submitter.start()
        poller.start()
        run_faults(stack, fault_plan, clock)
        submitter.join(timeout=120)
        stack.wait_restarts()
        faults_ended = clock()
        deadline = time.monotonic() + DRAIN_SECONDS
        while client.unfinished() and time.monotonic() < deadline:
            time.sleep(0.5)
        drained = clock()
        client.stop.set()
        poller.join(timeout=30)
        seen = client.final_pass()
        scheduler_exit = stack.scheduler.poll() if stack.scheduler is not None else -1
    finally:
        client.stop.set()
        stack.close()

    report = chaos_report(seed, seen)
    faults = Counter(f.kind for f in stack.faults)
    print("faults as injected:\n" + "\n".join(f.line() for f in stack.faults))
    print(
        f"faults over at {faults_ended:.1f} s, jobs drained at {drained:.1f} s "
        f"(total {time.monotonic() - started:.1f} s); "
        + ", ".join(f"{k}={n}" for k, n in sorted(faults.items()))
        + f"; 5xx answers: {len(client.server_errors)}"
    )
    for line in client.server_errors[:10]:
        print(f"  5xx: {line}")
    print(report.line())
    if report.problems:
        print(report.details())
        for job_id in report.problems:
            print(f"  worker log lines of {job_id}:\n{stack.log_lines_about(job_id)}")
    assert not stack.errors, stack.errors
    assert not client.refused, f"submits never accepted: {client.refused}"
    assert not client.other_keys, f"one Idempotency-Key, two jobs: {client.other_keys}"
    assert scheduler_exit is None, f"the scheduler exited ({scheduler_exit})"
    assert not client.server_errors, f"5xx answers: {client.server_errors}"
    problems = f"{report.line()}\n{report.details()}"
    assert report.submitted >= MIN_JOBS, problems
    assert report.taken_over > 0, f"no fault hit a running job\n{problems}"
    assert report.lost == 0, problems
    assert report.run_twice == 0, problems
    assert report.stale_writes == 0, problems
    assert report.completed == report.submitted, problems
