"""A worker that lost its lease changes nothing: its files are its own attempt's, and
only what the row names is served or resumed from.

Two real ``celery worker`` processes, the real reconciler and the API (gunicorn),
asked over HTTP; once with the job files in a directory, once in an S3 store (a real
moto_server process over loopback). The first attempt's pool process stops itself with SIGSTOP just
before one of its writes (the result, a checkpoint, a preview: ``worker.fault_hooks``),
stays stopped past its lease while the other worker takes the job over and finishes
it (or is canceled), then gets SIGCONT and makes that write, late.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_helpers import fault_report, job_log_events
from lease_cluster import LeaseCluster, cluster_env, pool_pid, process_state, wait_for
from service_helpers import DATA

from shared.models import JobStatus
from tests.s3_server import S3Server
from worker.fault_hooks import PAUSE_FILE_VARIABLE

pytestmark = pytest.mark.slow

CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()


class Fencing:
    def __init__(self, cluster: LeaseCluster, pause_file: Path) -> None:
        self.cluster = cluster
        self.pause_file = pause_file
        self.paused: set[int] = set()  # pool processes a test stopped and has not resumed

    def take_over(
        self, kind: str, *, iterations: int, cancel: bool = False
    ) -> tuple[uuid.UUID, int]:
        """A job whose first attempt stops before its ``kind`` write and another worker
        claims (canceled by the client first, with ``cancel``); returns the job and the
        stopped pool process."""
        cluster = self.cluster
        self.pause_file.write_text(kind)
        job_id = cluster.submit(CONTENT, [STYLE], iterations=iterations)
        pid = pool_pid(wait_for("the first claim", lambda: cluster.claim(job_id, 1)))
        self.paused.add(pid)
        try:
            wait_for(f"a pause before the {kind} write", lambda: process_state(pid) == "T")
        finally:
            self.pause_file.write_text("")
        if cancel:
            api = cluster.start_api()
            url = f"{api.base_url}/v1/jobs/{job_id}/cancel"
            assert httpx.post(url, headers=cluster.headers, timeout=30.0).status_code == 200
        second = wait_for("the other worker's claim", lambda: cluster.claim(job_id, 2))
        assert pool_pid(second) != pid
        return job_id, pid

    def resume(self, job_id: uuid.UUID, pid: int) -> None:
        """SIGCONT the stopped pool process and wait until it has given the job up."""
        os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)
        wait_for(
            "the late worker to give up",
            lambda: any(
                job_log_events(w.log(), job_id, "lease_lost") for w in self.cluster.workers
            ),
        )

    def download(self, job_id: uuid.UUID, what: str) -> httpx.Response:
        return self.cluster.http(f"/v1/jobs/{job_id}/{what}")

    def files(self, job_id: uuid.UUID, prefix: str) -> dict[str, tuple[object, bytes]]:
        return {
            name: found
            for name, found in self.cluster.files(job_id).items()
            if name.startswith(prefix)
        }

    def assert_no_stale_events(self, job_id: uuid.UUID) -> None:
        report = fault_report(self.cluster.db, [job_id])
        print(report.line(f"fencing {job_id}"))
        assert report.run_twice == 0, "the first attempt wrote an event after the second's claim"


@pytest.fixture(scope="module", params=["directory", "s3"])
def fencing(
    request: pytest.FixtureRequest,
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fencing]:
    store = request.param
    tmp = tmp_path_factory.mktemp(f"fencing-{store}")
    pause_file = tmp / "pause"
    pause_file.write_text("")
    env = cluster_env(
        f"fencing-{store}",
        postgresql_url=postgresql_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        data_dir=tmp / "data",
    )
    s3 = S3Server.start(tmp) if store == "s3" else None
    if s3 is not None:
        env.update(s3.env(prefix="fencing"))
    try:
        cluster = LeaseCluster({**env, PAUSE_FILE_VARIABLE: str(pause_file)}, tmp)
        try:
            cluster.start_workers("a", "b")
            cluster.start_api()
            yield Fencing(cluster, pause_file)
        finally:
            cluster.close()
    finally:
        if s3 is not None:
            s3.stop()


@pytest.fixture(autouse=True)
def nothing_left_stopped(fencing: Fencing) -> Iterator[None]:
    """A test that failed half way leaves no worker stopped for the next one."""
    yield
    for pid in fencing.paused:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    fencing.paused.clear()
    fencing.pause_file.write_text("")


def test_a_late_result_write_never_replaces_the_committed_result(fencing: Fencing) -> None:
    cluster = fencing.cluster
    job_id, pid = fencing.take_over("result", iterations=40)
    wait_for("the second attempt to succeed", lambda: cluster.row(job_id).status.is_finished)
    assert cluster.row(job_id).status is JobStatus.SUCCEEDED
    before = fencing.download(job_id, "result")
    assert before.status_code == 200
    files_before = fencing.files(job_id, "result")

    fencing.resume(job_id, pid)
    after = fencing.download(job_id, "result")
    assert fencing.files(job_id, "result") == files_before, "the late write touched a result"
    assert after.status_code == 200 and after.content == before.content
    row = cluster.row(job_id)
    assert row.status is JobStatus.SUCCEEDED and row.attempts == 2
    assert row.result_file == "result.a2.png", "the committing attempt's file"
    assert after.content == cluster.storage.get(job_id, row.result_file)
    assert list(files_before) == ["result.a2.png"]
    fencing.assert_no_stale_events(job_id)


def test_a_canceled_job_never_gains_a_result_from_a_late_write(fencing: Fencing) -> None:
    cluster = fencing.cluster
    # Canceled while its first worker is stopped: the second attempt stops at once.
    job_id, pid = fencing.take_over("result", iterations=40, cancel=True)
    wait_for("the cancel", lambda: cluster.row(job_id).status.is_finished)
    assert cluster.row(job_id).status is JobStatus.CANCELED

    fencing.resume(job_id, pid)
    assert fencing.files(job_id, "result") == {}, "a canceled job has no result file"
    result = fencing.download(job_id, "result")
    assert result.status_code == 409
    assert result.json()["error"]["details"] == {"status": "canceled"}
    row = cluster.row(job_id)
    assert row.status is JobStatus.CANCELED and row.result_file is None
    fencing.assert_no_stale_events(job_id)


def test_a_late_checkpoint_is_never_recorded_nor_resumed_from(fencing: Fencing) -> None:
    cluster = fencing.cluster
    job_id, pid = fencing.take_over("checkpoint", iterations=400)
    second = wait_for(
        "a checkpoint of the second attempt",
        lambda: [e for e in cluster.events(job_id, "checkpoint") if e.attempt == 2],
    )
    at = int(second[0].data["iteration"])

    fencing.resume(job_id, pid)
    late = [e for e in cluster.events(job_id, "checkpoint") if e.attempt == 1]
    assert not late, "the late attempt recorded a checkpoint"
    row = cluster.row(job_id)
    if not row.status.is_finished:
        assert row.checkpoint_file is not None
        assert row.checkpoint_file.startswith("checkpoint.a2."), "never the late attempt's"
        assert int(row.checkpoint_file.rsplit(".i", 1)[1].removesuffix(".bin")) >= at
    wait_for("the job to succeed", lambda: cluster.row(job_id).status.is_finished)
    row = cluster.row(job_id)
    assert row.status is JobStatus.SUCCEEDED and row.checkpoint_file is None
    # The worker deletes a finished job's checkpoints just after the success's commit.
    wait_for("no checkpoint left", lambda: fencing.files(job_id, "checkpoint") == {})
    events = cluster.events(job_id)
    assert events[-1].kind == "succeeded", [(e.kind, e.attempt) for e in events]
    fencing.assert_no_stale_events(job_id)


def test_a_late_preview_write_never_replaces_the_served_preview(fencing: Fencing) -> None:
    cluster = fencing.cluster
    job_id, pid = fencing.take_over("preview", iterations=60)
    wait_for("the second attempt to succeed", lambda: cluster.row(job_id).status.is_finished)
    assert cluster.row(job_id).status is JobStatus.SUCCEEDED
    before = fencing.download(job_id, "preview")
    assert before.status_code == 200
    files_before = fencing.files(job_id, "preview")

    fencing.resume(job_id, pid)
    after = fencing.download(job_id, "preview")
    assert fencing.files(job_id, "preview") == files_before, "the late write touched a preview"
    assert after.status_code == 200 and after.content == before.content
    row = cluster.row(job_id)
    assert row.preview_file is not None and row.preview_file.startswith("preview.a2.")
    assert after.content == cluster.storage.get(job_id, row.preview_file)
    assert list(files_before) == [row.preview_file], "the replaced previews are gone"
    fencing.assert_no_stale_events(job_id)
