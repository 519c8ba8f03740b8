"""The client and `submit --wait` against a real Celery worker process (tests/conftest.py's
``worker_stack``: PostgreSQL, Redis and `celery worker` running the real engine on the CPU).
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from api.services import EXTENSION_KEY
from cli.client_cmds import ClientConfig
from cli.main import cli
from client import Job, JobStatus, StylequeueClient
from shared.auth import create_client

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT, STYLE = DATA / "tubingen.png", DATA / "starry_night.png"
# Small, but long enough on the CPU for several progress beats (heartbeat 0.2 s in the tests).
JOB = {"size": 48, "iterations": 40, "scales": 1, "optimizer": "adam"}

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_client(worker_stack: Any) -> StylequeueClient:
    app = worker_stack.app  # tests/conftest.py's WorkerStack
    with app.extensions[EXTENSION_KEY].db.session() as session:
        _, key = create_client(session, f"client-tests-{secrets.token_hex(3)}")
    return StylequeueClient("http://stylequeue.test", key, transport=httpx.WSGITransport(app=app))


def test_wait_follows_a_real_worker_to_the_result(
    worker_client: StylequeueClient, tmp_path: Path
) -> None:
    seen: list[Job] = []
    with worker_client as sq:
        job = sq.submit(CONTENT, [STYLE], JOB)
        final = sq.wait(job.id, poll_interval=0.05, max_poll_interval=0.2, timeout=120,
                        on_progress=seen.append)  # fmt: skip
        assert final.status is JobStatus.SUCCEEDED, final.error
        assert final.attempts == 1 and final.worker and final.run_seconds is not None
        statuses = [j.status for j in seen]
        assert statuses[-1] is JobStatus.SUCCEEDED and JobStatus.RUNNING in statuses
        percents = [j.progress.percent for j in seen]
        assert percents == sorted(percents) and percents[-1] == 100.0
        saved = sq.download(job.id, tmp_path / "out.png")
    with Image.open(io.BytesIO(saved.read_bytes())) as image:
        # The content image is 64 x 48 (landscape): its longest side becomes `size`.
        assert image.format == "PNG" and max(image.size) == JOB["size"]


def test_submit_wait_with_a_real_worker(worker_client: StylequeueClient, tmp_path: Path) -> None:
    out = tmp_path / "styled.png"
    params = [item for k, v in JOB.items() for item in ("-p", f"{k}={v}")]
    result = CliRunner().invoke(
        cli,
        ["submit", str(CONTENT), str(STYLE), *params, "--wait", "-o", str(out)],
        obj=ClientConfig(lambda: worker_client),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "succeeded" in result.stderr.splitlines()[-1]
    with Image.open(out) as image:
        assert max(image.size) == JOB["size"]
