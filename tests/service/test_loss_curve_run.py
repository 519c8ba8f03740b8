"""A real run, in-process with the real engine, leaves its loss curve for /admin: one
``job_losses`` row per attempt, downsampled, ending at the last iteration it ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import store_job, worker_context

from shared.auth import create_client
from shared.loss_series import MAX_POINTS, read_losses
from worker.runner import Outcome, run_job

pytestmark = pytest.mark.slow


def test_a_run_writes_its_loss_curve_as_it_goes_and_at_its_end(
    database_url: str, tmp_path: Path
) -> None:
    with worker_context(database_url, tmp_path, preview_seconds=0.0) as ctx:
        with ctx.db.session() as session:
            client, _ = create_client(session, "losses")
            job_id = store_job(session, ctx.storage, client.id, iterations=12)
        assert run_job(ctx, job_id) is Outcome.SUCCEEDED
        with ctx.db.session() as session:
            attempts = read_losses(session, job_id)
    assert [a.attempt for a in attempts] == [1]
    points = attempts[0].points
    assert 2 <= len(points) <= MAX_POINTS
    iterations = [int(p[0]) for p in points]
    assert iterations == sorted(iterations) and iterations[-1] == 12
    assert all(len(p) == 5 and p[1] > 0 for p in points)
