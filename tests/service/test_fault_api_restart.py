"""Faults: the API restarted under submit load.

The real API (``stylequeue api``: gunicorn, 2 processes) and a real worker on
the run's database; no reconciler runs, so a job committed just before a
SIGKILL, its id not yet sent to Redis, must be sent again by the client's
retry (a replay of a queued job re-sends its id). Client threads
submit tiny jobs continuously, each with an Idempotency-Key, and retry a request
that failed with a connection error with the same key, as a careful client does.
Meanwhile the API is killed (SIGKILL to its process group) and started again,
stopped gracefully (SIGTERM) and started again, and reloaded (SIGHUP). Every job
that got a 202 (or a 200 replay) exists once per key and succeeds; no request is
answered with a 5xx; nothing runs twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_helpers
from api_process import ApiProcess
from fault_helpers import WorkerProcess, fault_report, started_workers
from flask.testing import FlaskClient
from processes import free_port
from sqlalchemy import func, select

from shared.auth import create_client
from shared.celery_app import JOBS_QUEUE
from shared.db import Database
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import LocalStorage, committed_result

CLIENT_THREADS = 3
PAUSE_SECONDS = 0.5  # between one thread's submits: the one worker must keep up
UP_SECONDS = 2.0  # load on a running API between faults
REQUEST_SECONDS = 10.0
RETRY_SECONDS = 60.0  # a client gives up a key after this long (the test then fails)
PARAMS = '{"size": 32, "iterations": 2, "scales": 1}'
WAIT_SECONDS = 180.0


@dataclass
class Outcomes:
    """What the client threads saw, shared between them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    job_of_key: dict[str, set[str]] = field(default_factory=dict)  # key → job ids answered
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (time, exception name)
    bad: list[str] = field(default_factory=list)  # anything but 202/200

    def record(self, key: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code in (200, 202):
                self.job_of_key.setdefault(key, set()).add(response.json()["id"])
            else:
                self.bad.append(f"{key}: {response.status_code} {response.text[:300]}")

    def error(self, exc: Exception) -> None:
        with self.lock:
            self.errors.append((time.monotonic(), exc.__class__.__name__))


def client_thread(
    index: int,
    base_url: str,
    api_key: str,
    files: dict[str, bytes],
    stop: threading.Event,
    outcomes: Outcomes,
) -> None:
    """Submit until told to stop; a key is retried until it gets an HTTP answer."""
    with httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=REQUEST_SECONDS,
    ) as http:
        number = 0
        while not stop.is_set():
            key = f"client{index}-{number}"
            number += 1
            deadline = time.monotonic() + RETRY_SECONDS
            while True:
                try:
                    response = http.post(
                        "/v1/jobs",
                        files={"content": files["content"], "style": files["style"]},
                        # Each job computed, not a copy of the last: every one is claimed.
                        data={"params": PARAMS, "cache": "false"},
                        headers={"Idempotency-Key": key},
                    )
                except httpx.TransportError as exc:  # refused, reset, closed mid-answer
                    outcomes.error(exc)
                    if time.monotonic() > deadline:
                        with outcomes.lock:
                            outcomes.bad.append(f"{key}: no answer in {RETRY_SECONDS:g} s")
                        return
                    time.sleep(0.05)
                    continue
                outcomes.record(key, response)
                break
            time.sleep(PAUSE_SECONDS)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started, stop_all = started_workers()
    yield started
    stop_all()


@pytest.mark.slow
def test_api_restarts_under_submit_load_lose_no_accepted_job(
    postgresql_url: str,
    workers: list[WorkerProcess],
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    image_bytes: Callable[[str], bytes],
) -> None:
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}apirestart:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_LEASE_SECONDS": "30",
        # One thread: on a shared, busy CPU torch's spinning threads make it ten times slower.
        "OMP_NUM_THREADS": "1",
    }
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True)
    db = Database(postgresql_url)
    api = ApiProcess(env, free_port(), tmp_path / "api.log")
    stop = threading.Event()
    outcomes = Outcomes()
    threads: list[threading.Thread] = []
    downtimes: dict[str, tuple[float, float]] = {}  # seconds to exit, seconds to be ready
    try:
        with db.session() as session:
            client, api_key = create_client(session, "apirestart")
        api.start()
        api.wait_ready()
        files = {"content": image_bytes("tubingen"), "style": image_bytes("starry_night")}
        for index in range(CLIENT_THREADS):
            thread = threading.Thread(
                target=client_thread,
                args=(index, api.base_url, api_key, files, stop, outcomes),
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        # The worker starts meanwhile (it loads VGG19): jobs queue up, then drain.
        workers.append(WorkerProcess(env, tmp_path / "worker.log", "apirestart"))
        time.sleep(UP_SECONDS)

        # 1. A crash: SIGKILL to gunicorn's master and its workers at once.
        killed_at = time.monotonic()
        api.signal(signal.SIGKILL, group=True)
        api.wait_exit()
        exited = time.monotonic() - killed_at
        api.start()
        downtimes["sigkill"] = (exited, api.wait_ready())
        time.sleep(UP_SECONDS)

        # 2. A graceful restart: SIGTERM to the master (requests in flight finish).
        stopped_at = time.monotonic()
        api.signal(signal.SIGTERM, group=False)
        assert api.wait_exit() == 0, api.log()[-3000:]
        exited = time.monotonic() - stopped_at
        api.start()
        downtimes["sigterm"] = (exited, api.wait_ready())
        time.sleep(UP_SECONDS)

        # 3. A reload: SIGHUP to the master (new workers, same listening socket).
        reloaded_at = time.monotonic()
        api.signal(signal.SIGHUP, group=False)
        time.sleep(UP_SECONDS)
        stop.set()
        for thread in threads:
            thread.join(timeout=RETRY_SECONDS + REQUEST_SECONDS)
            assert not thread.is_alive()

        # No 5xx, no 4xx: every key got a 202 or a 200 replay (connection errors aside).
        assert not outcomes.bad, outcomes.bad[:10]
        keys = outcomes.job_of_key
        assert all(len(ids) == 1 for ids in keys.values()), {
            k: v for k, v in keys.items() if len(v) > 1
        }
        accepted = {uuid.UUID(next(iter(ids))) for ids in keys.values()}
        assert len(accepted) == len(keys)

        # Exactly these jobs exist for this client, one per key.
        with db.session() as session:
            rows = session.execute(
                select(Job.id, Job.idempotency_key).where(Job.client_id == client.id)
            ).all()
        assert {row.id for row in rows} == accepted
        assert sorted(row.idempotency_key for row in rows) == sorted(keys)

        def all_succeeded() -> bool:
            with db.session() as session:
                done = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.client_id == client.id, Job.status == JobStatus.SUCCEEDED)
                )
            return done == len(accepted)

        service_helpers.wait_for(
            "every accepted job to succeed", all_succeeded, timeout=WAIT_SECONDS, interval=0.5
        )
        storage = LocalStorage(settings.data_dir)
        with db.session() as session:
            query = select(Job.id, Job.result_file).where(Job.id.in_(accepted))
            named = {job_id: name for job_id, name in session.execute(query)}
        assert all(storage.exists(job_id, committed_result(named[job_id])) for job_id in accepted)
        with httpx.Client(
            base_url=api.base_url, headers={"Authorization": f"Bearer {api_key}"}
        ) as http:
            for job_id in list(accepted)[:20]:
                result = http.get(f"/v1/jobs/{job_id}/result")
                assert result.status_code == 200 and result.content[:4] == b"\x89PNG"

        errors = Counter(name for _, name in outcomes.errors)
        after_reload = Counter(name for at, name in outcomes.errors if at >= reloaded_at)
        # A submit killed after its files were written and before its commit leaves them behind.
        orphans = [
            d
            for d in storage.job_dir(uuid.uuid4()).parent.iterdir()
            if uuid.UUID(d.name) not in accepted
        ]
        print(
            f"api-restart: {len(accepted)} jobs accepted by {CLIENT_THREADS} clients; "
            f"answers {dict(outcomes.statuses)}; connection errors {dict(errors)} "
            f"(after the SIGHUP: {dict(after_reload)}); "
            f"job directories without a job: {len(orphans)}; "
            "API down: "
            + ", ".join(
                f"{k} {a:.1f} s to exit + {b:.1f} s to start" for k, (a, b) in downtimes.items()
            )
        )
        report = fault_report(db, accepted)
        print(report.line("api-restart"))
        assert report.completed == len(accepted) and report.run_twice == 0
        assert report.attempts == len(accepted)
    finally:
        stop.set()
        api.stop()
        db.dispose()


def worker_pids(master: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``master``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


RESTART_READY_SECONDS = 10.0  # gunicorn retries a bind in use 5 times, a second apart


@pytest.mark.slow
def test_an_api_started_right_after_its_master_was_killed_binds_and_serves(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL to gunicorn's master alone (an OOM kill, a crash): its workers go with it.

    A client holds a kept-alive connection and another has sent half a request, as
    clients do at any moment; the new API started at once on the same port binds,
    answers, and no worker of the old one is left.
    """
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}masterkill:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
    }
    api = ApiProcess(env, free_port(), tmp_path / "api.log")
    old_workers: set[int] = set()
    try:
        api.start()
        api.wait_ready()
        assert api.process is not None
        master = api.process.pid

        def both_workers() -> set[int]:
            found = worker_pids(master)
            return found if len(found) >= 2 else set()

        old_workers = service_helpers.wait_for("both gunicorn workers", both_workers, timeout=30)
        with contextlib.ExitStack() as connections:
            kept = connections.enter_context(httpx.Client(base_url=api.base_url, timeout=5))
            assert kept.get("/healthz").status_code == 200  # the connection stays open
            partial = connections.enter_context(
                socket.create_connection(("127.0.0.1", api.port), timeout=5)
            )
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no end of headers

            killed_at = time.monotonic()
            os.kill(master, signal.SIGKILL)
            api.wait_exit()
            api.start()  # at once, on the same port
            # An orphaned worker would still answer on the old listening socket: wait for
            # them to be gone (the clients' connections still open) before asking the new one.
            service_helpers.wait_for(
                "the old master's workers to be gone",
                lambda: not any(alive(pid) for pid in old_workers),
                timeout=5,
            )
            ready = api.wait_ready()
            assert ready < RESTART_READY_SECONDS, api.log()[-3000:]
            new_start = api.log().split("--- start 2")[1]
            assert "Listening at" in new_start and "Connection in use" not in new_start, new_start
        print(
            f"master-kill: the new API answered /healthz {ready:.2f} s after its start, "
            f"{time.monotonic() - killed_at:.2f} s after the kill"
        )
    finally:
        api.stop()
        for pid in old_workers:  # only if the test failed: orphans of the old master
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_replay_of_a_queued_job_sends_its_id_again(
    submit: Callable[..., Any], http: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    """The retry that follows a crash between the commit and the enqueue starts the job."""
    import redis

    queue = redis.Redis.from_url(settings.redis_url)
    queue_key = settings.redis_prefix + JOBS_QUEUE

    def messages(job_id: str) -> int:
        return sum(job_id.encode() in m for m in queue.lrange(queue_key, 0, -1))

    try:
        first = submit(headers={"Idempotency-Key": "replay-resend"})
        job_id = first.json["id"]
        assert first.status_code == 202 and messages(job_id) == 1
        again = submit(headers={"Idempotency-Key": "replay-resend"})
        assert again.status_code == 200 and again.json["id"] == job_id
        assert messages(job_id) == 2
        # A job that is no longer queued is not sent again.
        assert http.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
        assert submit(headers={"Idempotency-Key": "replay-resend"}).status_code == 200
        assert messages(job_id) == 2
    finally:
        queue.close()
