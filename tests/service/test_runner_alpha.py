"""A job whose content has transparency keeps it: the worker's result is an RGBA PNG with the
content's alpha, resized. In-process with the real engine, on each database backend."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from service_helpers import DATA, worker_context

from shared import submissions
from shared.auth import create_client
from shared.models import Job, JobStatus
from shared.params import parse_params
from worker.context import WorkerContext
from worker.runner import Outcome, run_job


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(database_url, tmp_path) as context:
        yield context


def cutout() -> bytes:
    """Tübingen at 48×36 with its left half fully transparent."""
    photo = Image.open(DATA / "tubingen.png").convert("RGBA").resize((48, 36))
    alpha = Image.new("L", photo.size, 255)
    alpha.paste(0, (0, 0, 24, 36))
    photo.putalpha(alpha)
    out = io.BytesIO()
    photo.save(out, "PNG")
    return out.getvalue()


def test_a_transparent_content_gives_a_result_with_its_alpha(ctx: WorkerContext) -> None:
    with ctx.db.session() as session:
        client, _ = create_client(session, f"alpha-{uuid.uuid4().hex[:8]}")
        job, _ = submissions.create_job(
            session,
            ctx.storage,
            client_id=client.id,
            params=parse_params({"size": 32, "iterations": 2, "scales": 1}),
            content=cutout(),
            styles=[(DATA / "starry_night.png").read_bytes()],
            idempotency_key=None,
            enqueue=lambda _job_id: None,
        )
    assert run_job(ctx, job.id) is Outcome.SUCCEEDED
    with ctx.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.status is JobStatus.SUCCEEDED and row.result_file
        name = row.result_file
    with Image.open(io.BytesIO(ctx.storage.get(job.id, name))) as result:
        assert result.mode == "RGBA" and result.size == (32, 24)
        assert result.getpixel((4, 12))[3] == 0, "transparent where the content was"
        assert result.getpixel((28, 12))[3] == 255, "opaque where it was"
