"""Faults: PostgreSQL crashes and comes back.

The test runs a PostgreSQL server of its own (``pg_cluster``), the real API
(``stylequeue api``, gunicorn) and a real worker against it, and crashes the
server (``pg_ctl stop -m immediate``) with one job running and others queued.
During the outage the API answers 503 in the JSON error shape, fast, on every
endpoint that needs the database; /healthz stays 200 and /readyz is 503 naming
the database. After ``pg_ctl start`` on the same data directory and port the
API and the worker recover by themselves: the running job goes on (its
heartbeats failed for less than its lease), nothing is run twice, every
accepted job succeeds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_helpers
from api_process import ApiProcess
from fault_helpers import WorkerProcess, fault_report, job_log_events, log_lines, started_workers
from pg_cluster import PostgresCluster
from processes import free_port
from service_helpers import store_job, worker_context
from sqlalchemy import select

import migrations
from shared import jobs, submissions
from shared.auth import create_client
from shared.celery_app import create_celery, enqueue_job
from shared.db import CommitOutcomeUnknownError, Database
from shared.errors import LeaseLostError, ServiceUnavailableError
from shared.models import Job, JobEvent, JobStatus
from shared.params import parse_params
from shared.settings import Settings
from shared.storage import LocalStorage
from worker.context import WorkerContext
from worker.reporter import JobReporter
from worker.runner import Outcome, run_job

pytestmark = pytest.mark.slow

LEASE_SECONDS = 20.0  # the outage must be shorter than this, or the job is stopped
HEARTBEAT_SECONDS = 0.2
OUTAGE_SECONDS = 4.0  # twenty heartbeats fail, well within the lease
REQUEST_SECONDS = 5.0  # no request may take longer than this, outage or not
RUN_SECONDS = 10.0  # the long job: running before, during and after the outage
WARMUP_ITERATIONS = 30  # measures the machine's speed for the long job
SHORT_ITERATIONS = 10
WAIT_SECONDS = 120.0


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.1)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    own = PostgresCluster()
    try:
        own.start()
        own.create_database()
        migrations.upgrade(own.url)
        yield own
    finally:
        own.destroy()


@pytest.fixture
def cluster(own_cluster: PostgresCluster) -> PostgresCluster:
    """The module's cluster, up (a test that failed mid-outage may have left it down)."""
    if not own_cluster.running():
        own_cluster.start()
    return own_cluster


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started, stop_all = started_workers()
    yield started
    stop_all()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == "service_unavailable" and "database" in error["message"], error


def test_postgres_crash_and_restart(
    cluster: PostgresCluster,
    workers: list[WorkerProcess],
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    image_bytes: Callable[[str], bytes],
) -> None:
    env = {
        "STYLEQUEUE_DATABASE_URL": cluster.url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}pgrestart:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "STYLEQUEUE_CHECKPOINT_SECONDS": "1",
        "STYLEQUEUE_LEASE_SECONDS": str(LEASE_SECONDS),
        # One thread: on a shared, busy CPU torch's spinning threads make it ten times slower.
        "OMP_NUM_THREADS": "1",
        "STYLEQUEUE_LOG_FORMAT": "json",  # the test reads the worker's lines by their fields
    }
    settings = Settings.from_env(env)
    db = Database(cluster.url)
    celery = create_celery(settings)
    api = ApiProcess(env, free_port(), tmp_path / "api.log")
    try:
        with db.session() as session:
            client, key = create_client(session, "pgrestart")
        api.start()
        workers.append(WorkerProcess(env, tmp_path / "worker.log", "pgrestart"))
        api.wait_ready()
        http = httpx.Client(
            base_url=api.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=REQUEST_SECONDS,
        )
        files = {"content": image_bytes("tubingen"), "style": image_bytes("starry_night")}

        def submit(iterations: int, idempotency_key: str) -> httpx.Response:
            return http.post(
                "/v1/jobs",
                files=files,
                data={
                    "params": f'{{"size": 32, "iterations": {iterations}, "scales": 1}}',
                    "cache": "false",  # a repeat is computed: the worker is what is tested
                },
                headers={"Idempotency-Key": idempotency_key},
            )

        def job(job_id: uuid.UUID) -> Job:
            with db.session() as s:
                found = s.get(Job, job_id)
                assert found is not None
                return found

        def events(job_id: uuid.UUID, kind: str) -> list[JobEvent]:
            with db.session() as s:
                query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
                return list(s.scalars(query.order_by(JobEvent.id)))

        accepted: list[uuid.UUID] = []

        def accept(iterations: int, idempotency_key: str) -> uuid.UUID:
            response = submit(iterations, idempotency_key)
            assert response.status_code == 202, response.text
            accepted.append(uuid.UUID(response.json()["id"]))
            return accepted[-1]

        # How fast does this machine run? The long job should last about
        # RUN_SECONDS: through the outage and a little past it.
        warmup = accept(WARMUP_ITERATIONS, "warmup")
        wait_for("the first job", lambda: job(warmup).status is JobStatus.SUCCEEDED)
        first = job(warmup)
        assert first.started_at is not None and first.finished_at is not None
        took = (first.finished_at - first.started_at).total_seconds()
        rate = WARMUP_ITERATIONS / max(took, 0.05)
        long_iterations = int(min(max(rate * RUN_SECONDS, 50), 2000))
        running = accept(long_iterations, "long")
        accept(SHORT_ITERATIONS, "queued-1")
        accept(SHORT_ITERATIONS, "queued-2")
        wait_for("a checkpoint of the long job", lambda: events(running, "checkpoint"))
        before_crash = job(running)
        assert before_crash.status is JobStatus.RUNNING
        db.dispose()  # the test's own pool must not hold dead connections either

        cluster.crash()
        crashed_at = time.monotonic()
        seen: dict[str, list[int]] = {"poll": [], "submit": [], "readyz": [], "healthz": []}
        slowest = 0.0
        outage_keys: list[str] = []
        while time.monotonic() - crashed_at < OUTAGE_SECONDS:
            for name in seen:
                started = time.monotonic()
                if name == "poll":
                    response = http.get(f"/v1/jobs/{running}")
                elif name == "submit":
                    outage_keys.append(f"outage-{len(outage_keys)}")
                    response = submit(SHORT_ITERATIONS, outage_keys[-1])
                else:
                    response = http.get(f"/{name}")
                slowest = max(slowest, time.monotonic() - started)
                seen[name].append(response.status_code)
                if name in ("poll", "submit"):
                    assert_unavailable(response)
                elif name == "readyz":
                    assert response.status_code == 503, response.text
                    error = response.json()["error"]
                    assert error["code"] == "service_unavailable"
                    assert "database" in error["message"], error
                    assert error["details"] == {"database": "unavailable", "redis": "ok"}, error
                else:
                    assert response.status_code == 200, response.text
            time.sleep(0.1)
        listing = http.get("/v1/jobs")
        assert_unavailable(listing)
        cancel = http.post(f"/v1/jobs/{running}/cancel")
        assert_unavailable(cancel)
        print(
            f"during the outage: { ({k: len(v) for k, v in seen.items()}) } requests, "
            f"slowest {slowest:.2f} s"
        )
        assert slowest < REQUEST_SECONDS
        worker_log = workers[0].log()
        assert job_log_events(worker_log, running, "heartbeat_failed"), worker_log[-3000:]

        cluster.start()
        restarted_at = time.monotonic()
        outage = restarted_at - crashed_at
        # The first requests after the restart: what does the client see?
        after: list[tuple[str, int]] = []
        while True:
            poll = http.get(f"/v1/jobs/{running}")
            after.append(("poll", poll.status_code))
            if poll.status_code == 200:
                break
            assert_unavailable(poll)
            assert time.monotonic() - restarted_at < 10, after
            time.sleep(0.05)
        for key_ in outage_keys[:4]:  # a careful client retries the 503s with the same key
            response = submit(SHORT_ITERATIONS, key_)
            after.append(("submit", response.status_code))
            assert response.status_code == 202, response.text  # the 503 created nothing
            accepted.append(uuid.UUID(response.json()["id"]))
        print(
            f"long job: {long_iterations} iterations ({rate:.0f} it/s measured), "
            f"crashed at iteration {before_crash.iteration}; "
            f"after the restart ({outage:.1f} s outage): {after}"
        )
        assert http.get("/readyz").status_code == 200

        def all_done() -> bool:
            return all(job(j).status is JobStatus.SUCCEEDED for j in accepted)

        wait_for("every accepted job to succeed", all_done)
        for job_id in accepted:
            result = http.get(f"/v1/jobs/{job_id}/result")
            assert result.status_code == 200 and result.content[:4] == b"\x89PNG"
        finished = job(running)
        # The running job went on through the outage: one attempt, one worker.
        assert finished.attempts == 1, [e.kind for e in events(running, "claimed")]
        worker_log = workers[0].log()
        stops = [
            line
            for line in log_lines(worker_log)
            if line.get("event") in ("lease_expired", "lease_lost")
        ]
        assert not stops, stops
        with db.session() as s:
            count = s.query(Job).count()
        assert count == len(accepted), "a 503 during the outage created a job"

        # A second crash, the worker idle: a job committed just before it, whose
        # message reaches the worker during the outage. The worker keeps the message
        # and claims the job once the database is back (no reconciler runs here).
        with db.session() as session:
            held, _ = submissions.create_job(
                session,
                LocalStorage(settings.data_dir),
                client_id=client.id,
                params=parse_params({"size": 32, "iterations": SHORT_ITERATIONS, "scales": 1}),
                content=files["content"],
                styles=[files["style"]],
                idempotency_key=None,
                enqueue=lambda _job_id: None,  # sent below, once the database is down
            )
        accepted.append(held.id)
        db.dispose()
        cluster.crash()
        enqueue_job(celery, held.id)
        wait_for(
            "the worker to fail to claim the job",
            lambda: f"could not claim job {held.id}" in workers[0].log(),
            timeout=30,
        )
        time.sleep(1.0)
        cluster.start()
        wait_for("the held job to succeed", lambda: job(held.id).status is JobStatus.SUCCEEDED)
        report = fault_report(db, accepted)
        print(report.line("postgres-restart"))
        assert (report.completed, report.run_twice) == (len(accepted), 0)
        assert report.iterations_redone == 0 and report.attempts == len(accepted)
    finally:
        api.stop()
        celery.close()
        db.dispose()


# The worker's side alone, in-process, against the same kind of crash: the moments
# the end-to-end test above may or may not hit, depending on the machine's speed.


@pytest.fixture
def ctx(cluster: PostgresCluster, tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(cluster.url, tmp_path, lease_seconds=LEASE_SECONDS) as context:
        yield context


def _queued_job(ctx: WorkerContext) -> uuid.UUID:
    with ctx.db.session() as session:
        client, _ = create_client(session, f"worker-{uuid.uuid4().hex[:6]}")
        return store_job(session, ctx.storage, client.id, iterations=SHORT_ITERATIONS)


def _row(ctx: WorkerContext, job_id: uuid.UUID) -> Job:
    with ctx.db.session() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def _status(ctx: WorkerContext, job_id: uuid.UUID) -> JobStatus:
    return _row(ctx, job_id).status


def test_an_outcome_written_during_the_outage_waits_for_the_database_within_the_lease(
    cluster: PostgresCluster, ctx: WorkerContext
) -> None:
    job_id = _queued_job(ctx)
    with ctx.db.session() as session:
        claim = jobs.claim_job(session, job_id, worker=ctx.name, lease_seconds=LEASE_SECONDS)
        assert claim is not None
        reporter = JobReporter(ctx, session, claim)
        cluster.crash()
        restart = threading.Timer(1.5, cluster.start)
        restart.start()
        started = time.monotonic()
        try:
            # The engine finished during the outage: the success is written once it is over.
            reporter.write(
                "record the success",
                lambda: jobs.finish_job(session, claim, result_file="result.a1.png"),
            )
        finally:
            restart.join()
        assert time.monotonic() - started >= 1.4
    assert _status(ctx, job_id) is JobStatus.SUCCEEDED


def test_an_outcome_not_written_before_the_lease_runs_out_is_given_up(
    cluster: PostgresCluster, ctx: WorkerContext
) -> None:
    job_id = _queued_job(ctx)
    now = [0.0]
    with ctx.db.session() as session:
        claim = jobs.claim_job(session, job_id, worker=ctx.name, lease_seconds=LEASE_SECONDS)
        assert claim is not None
        reporter = JobReporter(ctx, session, claim, clock=lambda: now[0])
        cluster.crash()
        now[0] = LEASE_SECONDS - 1.0  # the heartbeats failed until a second before the end
        started = time.monotonic()
        with pytest.raises(LeaseLostError):
            reporter.write(
                "record the success",
                lambda: jobs.finish_job(session, claim, result_file="result.a1.png"),
            )
        assert time.monotonic() - started < 5  # no waiting past the lease
    cluster.start()
    # Nothing written: the job waits for its lease to expire and the reconciler.
    assert _status(ctx, job_id) is JobStatus.RUNNING


def test_a_worker_shutting_down_while_the_database_is_down_hands_the_message_back(
    cluster: PostgresCluster, ctx: WorkerContext
) -> None:
    job_id = _queued_job(ctx)
    cluster.crash()
    ctx.shutting_down.set()
    assert run_job(ctx, job_id) is Outcome.RELEASED
    cluster.start()
    ctx.shutting_down.clear()
    # Untouched: still queued, and the next delivery of its message claims it.
    assert _status(ctx, job_id) is JobStatus.QUEUED
    with ctx.db.session() as session:
        claim = jobs.claim_job(session, job_id, worker=ctx.name, lease_seconds=LEASE_SECONDS)
    assert claim is not None and claim.attempt == 1


SLOW_COMMIT = """
CREATE FUNCTION sq_test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER sq_test_slow_commit AFTER INSERT ON job_events
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sq_test_slow_commit();
"""


def test_a_submit_whose_commit_is_cut_keeps_its_files_and_says_to_retry(
    cluster: PostgresCluster, tmp_path: Path, image_bytes: Callable[[str], bytes]
) -> None:
    """The API's fast path loses its connection during COMMIT: the outcome is unknown,
    so the input files stay (the row may be in) and the 503 says to retry with the key."""
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(SLOW_COMMIT)  # the COMMIT runs this deferred trigger: it waits
    db = Database(cluster.url)
    storage = LocalStorage(tmp_path)
    assert db.thread_connections is not None
    raised: list[BaseException] = []

    def submit() -> None:
        with db.session() as session:
            client, _ = create_client(session, "commit-cut")
            try:
                submissions.create_job(
                    session,
                    storage,
                    client_id=client.id,
                    params=parse_params({"size": 32, "iterations": 2, "scales": 1}),
                    content=image_bytes("tubingen"),
                    styles=[image_bytes("starry_night")],
                    idempotency_key="cut",
                    enqueue=lambda _job_id: None,
                    db=db,
                )
            except BaseException as exc:
                raised.append(exc)

    def committing() -> bool:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                " OR wait_event = 'PgSleep'"
            ).fetchone()
            return bool(row and row[0])

    thread = threading.Thread(target=submit)
    thread.start()
    try:
        wait_for("the submit to be committing", committing, timeout=30)
        cluster.crash()
        thread.join(timeout=30)
        assert not thread.is_alive()
        [error] = raised
        assert isinstance(error, CommitOutcomeUnknownError), repr(error)
        assert error.http_status == 503 and "Idempotency-Key" in error.message
        # Kept: had the commit gone through, the job would need them.
        [job_dir] = (tmp_path / "jobs").iterdir()
        assert (job_dir / "content.png").is_file()
    finally:
        thread.join(timeout=30)
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("DROP TRIGGER sq_test_slow_commit ON job_events")
            admin.execute("DROP FUNCTION sq_test_slow_commit()")
        db.dispose()


def test_a_database_host_that_never_answers_is_a_503_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No hang on a host that accepts TCP and says nothing (or drops every packet)."""
    import socket

    import shared.db

    monkeypatch.setattr(shared.db, "CONNECT_TIMEOUT_SECONDS", 2)  # libpq's minimum
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody answers
        db = Database(f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/none")
        assert db.thread_connections is not None
        driver = db.thread_connections
        checks = {"pool": db.ping, "driver": lambda: driver.fetch_one("SELECT 1", ())}
        try:
            for name, check in checks.items():
                outcome: list[BaseException | None] = []

                def run(
                    check: Callable[[], object] = check,
                    outcome: list[BaseException | None] = outcome,
                ) -> None:
                    try:
                        check()
                        outcome.append(None)
                    except BaseException as exc:
                        outcome.append(exc)

                thread = threading.Thread(target=run, daemon=True)
                started = time.monotonic()
                thread.start()
                thread.join(timeout=10)  # not forever, should it hang
                assert outcome, f"{name}: still connecting after 10 s"
                assert isinstance(outcome[0], ServiceUnavailableError), (name, outcome)
                assert time.monotonic() - started < 5, name
        finally:
            db.dispose()


def test_an_outage_longer_than_the_lease_stops_the_job_and_it_writes_nothing(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Past the lease the worker stops and lets the job go without writing: no file it
    could not commit; the next attempt resumes from what the database recorded."""
    with worker_context(
        cluster.url, tmp_path, lease_seconds=2.0, checkpoint_seconds=1000.0
    ) as context:  # no periodic checkpoint
        context.network()
        with context.db.session() as session:
            client, _ = create_client(session, "long-outage")
            job_id = store_job(session, context.storage, client.id, iterations=5000)
        outcome: list[Outcome] = []
        thread = threading.Thread(target=lambda: outcome.append(run_job(context, job_id)))
        thread.start()
        try:
            wait_for("a heartbeat", lambda: _row(context, job_id).iteration > 0, timeout=60)
            seen = _row(context, job_id).iteration
            context.db.dispose()
            cluster.crash()
            thread.join(timeout=30)  # the lease is 2 s
            assert outcome == [Outcome.LEASE_LOST]
        finally:
            if thread.is_alive():
                context.shutting_down.set()
                thread.join(timeout=30)
            cluster.start()
        assert seen > 0
        directory = context.storage.job_dir(job_id)
        assert not [p.name for p in directory.iterdir() if "checkpoint" in p.name]
        stopped = _row(context, job_id)
        assert stopped.status is JobStatus.RUNNING and stopped.attempts == 1  # nothing written
        assert stopped.checkpoint_file is None

        def claim_next() -> jobs.Claim | None:
            with context.db.session() as session:
                return jobs.claim_job(session, job_id, worker="next", lease_seconds=30)

        # The database's lease (2 s from the last heartbeat) runs out too: until then
        # a claim matches no row and changes nothing.
        claim = wait_for("the database's lease to run out", claim_next, timeout=30)
        assert claim is not None and claim.attempt == 2  # the reconciler's re-send, claimed
        assert claim.checkpoint_file is None  # nothing recorded: it starts over
