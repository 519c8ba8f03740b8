"""A worker keeps its job for as long as it is alive and working on it, whatever the
engine is doing: here decoding inputs that take several leases' time before the first
iteration. Two real ``celery worker`` processes and the real reconciler, which re-sends
a job as soon as its lease runs out: without renewals the other worker claims it
again and again until the job fails with ``too_many_attempts``, though nobody died.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pytest
from lease_cluster import LEASE_SECONDS, LeaseCluster, cluster_env, wait_for
from PIL import Image

from shared.models import JobStatus

pytestmark = pytest.mark.slow

SIDE = 4800  # 23 Mpx, under the default STYLEQUEUE_MAX_IMAGE_PIXELS; 1-2 s each to decode
STYLES = 5  # with the content, six such decodes: several leases even on a fast machine


@pytest.fixture(scope="module")
def cluster(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LeaseCluster]:
    tmp = tmp_path_factory.mktemp("lease-renewal")
    env = cluster_env(
        "lease-renewal",
        postgresql_url=postgresql_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        data_dir=tmp / "data",
    )
    running = LeaseCluster(env, tmp)
    try:
        running.start_workers("a", "b")
        yield running
    finally:
        running.close()


def large_png(seed: int) -> bytes:
    """A big picture in a small file: stripes compress to a few hundred KB."""
    pixels = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    pixels[:: 5 + seed, :, 0] = 255
    pixels[:, :: 3 + seed, 1] = 180
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def test_a_job_whose_inputs_take_longer_than_the_lease_to_load_is_claimed_once(
    cluster: LeaseCluster,
) -> None:
    styles = [large_png(seed) for seed in range(1, STYLES + 1)]
    job_id = cluster.submit(large_png(0), styles, iterations=20)
    claim = wait_for("the claim", lambda: cluster.claim(job_id, 1))
    claimed_at = time.monotonic()
    wait_for(
        "the first iteration",
        lambda: (row := cluster.row(job_id)).iteration > 0 or row.status.is_finished,
    )
    before_first_iteration = time.monotonic() - claimed_at
    wait_for("the job to finish", lambda: cluster.row(job_id).status.is_finished)

    row = cluster.row(job_id)
    claims = [(c.attempt, c.worker) for c in cluster.events(job_id, "claimed")]
    print(
        f"LEASE RENEWAL: lease={LEASE_SECONDS}s before_first_iteration="
        f"{before_first_iteration:.1f}s claims={len(claims)} status={row.status.value}"
    )
    assert row.status is JobStatus.SUCCEEDED, (row.error_code, row.error_message, claims)
    assert claims == [(1, claim.worker)], "one claim: the worker was slow, not dead"
    assert row.attempts == 1
    assert not cluster.events(job_id, "requeued"), "the lease never ran out"
    # The premise: the worker spent several leases before its first progress report.
    assert before_first_iteration > 2 * LEASE_SECONDS
