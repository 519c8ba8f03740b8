"""A running job whose storage fails (full, or read-only) is handed back, not failed: once
the storage is back, the next attempt resumes from the last committed checkpoint and the
job succeeds. A real ``celery worker`` with its data dir on a small tmpfs that the test
mounts (root and ``mount -t tmpfs`` needed: skipped without, failed under CI=true; chmod
cannot stop root from writing), and the real reconciler, which sends the handed-back job
again after STYLEQUEUE_REQUEUE_AFTER_SECONDS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import volumes
from fault_helpers import fault_report, job_log_events, log_lines
from lease_cluster import LeaseCluster, cluster_env, wait_for
from service_helpers import DATA

from shared.models import JobStatus

pytestmark = pytest.mark.slow

TMPFS_BYTES = 16 * 1024 * 1024
ITERATIONS = 400


@pytest.fixture(scope="module")
def cluster(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LeaseCluster, Path]]:
    tmp = tmp_path_factory.mktemp("storage-worker")
    with volumes.tmpfs(tmp / "volume", TMPFS_BYTES) as volume:
        env = cluster_env(
            "storage-worker",
            postgresql_url=postgresql_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            data_dir=volume / "data",
        )
        env["STYLEQUEUE_REQUEUE_AFTER_SECONDS"] = "2"
        # The scheduler's own schedule file lives in its data dir: not on the volume that fills.
        running = LeaseCluster(
            env, tmp, scheduler_env={"STYLEQUEUE_DATA_DIR": str(tmp / "scheduler-data")}
        )
        try:
            running.start_workers("w")
            yield running, volume
        finally:
            running.close()


@pytest.mark.parametrize(
    ("fault", "code"), [("full", "storage_full"), ("read-only", "storage_unavailable")]
)
def test_a_job_whose_storage_fails_is_handed_back_and_succeeds_once_it_is_back(
    cluster: tuple[LeaseCluster, Path], fault: str, code: str
) -> None:
    running, volume = cluster
    job_id = running.submit(
        (DATA / "tubingen.png").read_bytes(),
        [(DATA / "starry_night.png").read_bytes()],
        iterations=ITERATIONS,
    )
    checkpoint = wait_for("a committed checkpoint", lambda: running.row(job_id).checkpoint_file)
    if fault == "full":
        filler = volumes.fill(volume)
    else:
        volumes.remount(volume, "ro")
    try:
        wait_for(
            "the job to be handed back (or to end)",
            lambda: running.events(job_id, "released") or running.row(job_id).status.is_finished,
        )
        row = running.row(job_id)
        assert row.status is JobStatus.QUEUED, (row.status, row.error_code, row.error_message)
        assert row.error_code is None and row.attempts == 1
        [released] = running.events(job_id, "released")
        assert released.attempt == 1 and released.data["reason"] == code
        assert row.checkpoint_file is not None and row.checkpoint_file.startswith("checkpoint.a1.")
        [worker] = running.workers
        log = worker.log()
        warnings = [
            line
            for line in job_log_events(log, job_id, "storage_error")
            if line["attempt"] == 1 and line["error_code"] == code
        ]
        assert warnings and warnings[0]["level"] == "WARNING", log[-3000:]
        assert "the storage failed" in warnings[0]["message"], "what the operator reads"
        unexpected = [line for line in log_lines(log) if line.get("event") == "unexpected_error"]
        assert not unexpected, "a storage problem, not a bug"
    finally:
        if fault == "full":
            filler.unlink()
        else:
            volumes.remount(volume, "rw")

    wait_for("the job to finish", lambda: running.row(job_id).status.is_finished)
    row = running.row(job_id)
    assert row.status is JobStatus.SUCCEEDED, (row.error_code, row.error_message)
    assert row.attempts == 2 and row.result_file == "result.a2.png"
    assert running.storage.exists(job_id, row.result_file)
    [resumed] = running.events(job_id, "resumed")
    assert resumed.attempt == 2 and resumed.data["iteration"] >= int(
        checkpoint.rsplit(".i", 1)[1].removesuffix(".bin")
    )
    assert not running.events(job_id, "failed")
    report = fault_report(running.db, [job_id])
    print(report.line(f"storage-{fault}"))
    assert (report.submitted, report.completed, report.run_twice) == (1, 1, 0)
