"""The client against the real API app (httpx.WSGITransport; real database and Redis).

Each test runs on PostgreSQL and on SQLite (the ``app`` fixture is parametrised).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from client_job_driver import JobDriver, join_checked
from PIL import Image

from client import (
    BadRequestError,
    ConflictError,
    Job,
    JobStatus,
    NotFoundError,
    StylequeueClient,
    UnauthorizedError,
)
from shared.params import DEFAULT_OPTIMIZER, StyleParams

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = DATA / "tubingen.png"
STYLE = DATA / "starry_night.png"
TINY = {"size": 32, "iterations": 2, "scales": 1}
Png = Callable[[int, int], bytes]
MakeClient = Callable[[str], StylequeueClient]


def test_submit_then_get(sq: StylequeueClient) -> None:
    job = sq.submit(CONTENT, [STYLE], TINY)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None
    assert (
        job.params["size"] == 32 and job.params["optimizer"] == DEFAULT_OPTIMIZER
    )  # defaults filled
    assert job.urls.self == f"/v1/jobs/{job.id}"
    again = sq.get(job.id)
    assert (again.id, again.status, again.created_at) == (job.id, job.status, job.created_at)


def test_submit_bytes_and_several_styles(sq: StylequeueClient) -> None:
    styles = [STYLE.read_bytes(), (DATA / "shipwreck.png").read_bytes()]
    job = sq.submit(CONTENT.read_bytes(), styles, {**TINY, "style_blend": [3, 1]})
    assert job.params["style_blend"] == [3, 1]


def test_idempotency_key_returns_the_first_job(sq: StylequeueClient) -> None:
    first = sq.submit(CONTENT, [STYLE], TINY, idempotency_key="client-retry-1")
    second = sq.submit(CONTENT, [STYLE], TINY, idempotency_key="client-retry-1")
    assert second.id == first.id


def test_list_pages_through_every_job_newest_first(
    make_client: MakeClient, make_api_key: Callable[[], str]
) -> None:
    sq = make_client(make_api_key())
    submitted = [sq.submit(CONTENT, [STYLE], TINY).id for _ in range(5)]
    first = sq.list(limit=2)
    assert len(first.jobs) == 2 and first.next_cursor is not None
    second = sq.list(limit=2, cursor=first.next_cursor)
    third = sq.list(limit=2, cursor=second.next_cursor)
    assert third.next_cursor is None
    paged = [job.id for page in (first, second, third) for job in page.jobs]
    assert paged == submitted[::-1]
    assert [job.id for job in sq.iter_jobs(page_size=3)] == submitted[::-1]


def test_list_filters_by_status(make_client: MakeClient, make_api_key: Callable[[], str]) -> None:
    sq = make_client(make_api_key())
    kept, canceled = sq.submit(CONTENT, [STYLE], TINY), sq.submit(CONTENT, [STYLE], TINY)
    sq.cancel(canceled.id)
    assert [j.id for j in sq.iter_jobs(status=JobStatus.CANCELED)] == [canceled.id]
    assert [j.id for j in sq.iter_jobs(status="queued")] == [kept.id]
    assert list(sq.iter_jobs(status="succeeded")) == []


def test_cancel_is_idempotent_and_a_canceled_job_has_no_result(sq: StylequeueClient) -> None:
    job = sq.submit(CONTENT, [STYLE], TINY)
    assert sq.cancel(job.id).status is JobStatus.CANCELED
    assert sq.cancel(job.id).status is JobStatus.CANCELED
    with pytest.raises(ConflictError) as info:
        sq.result(job.id)
    assert info.value.status == 409 and info.value.code == "job_not_succeeded"
    assert info.value.details["status"] == "canceled"


def test_an_unknown_job_is_not_found(sq: StylequeueClient) -> None:
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        with pytest.raises(NotFoundError) as info:
            sq.get(job_id)
        assert info.value.code == "job_not_found"


def test_another_clients_job_is_not_found(
    make_client: MakeClient, make_api_key: Callable[[], str]
) -> None:
    alice, bob = make_client(make_api_key()), make_client(make_api_key())
    job = alice.submit(CONTENT, [STYLE], TINY)
    for call in (bob.get, bob.cancel, bob.result):
        with pytest.raises(NotFoundError):
            call(job.id)
    assert alice.get(job.id).status is JobStatus.QUEUED


def test_an_unknown_key_is_unauthorized(make_client: MakeClient) -> None:
    with pytest.raises(UnauthorizedError) as info:
        make_client("sq_not_a_real_key").list()
    assert info.value.status == 401 and info.value.code


@pytest.mark.parametrize(
    ("params", "field"),
    [({"size": 4}, "size"), ({"optimizer": "sgd"}, "optimizer"), ({"colour": 1}, "colour")],
)
def test_a_bad_parameter_names_its_field(
    sq: StylequeueClient, params: dict[str, object], field: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        sq.submit(CONTENT, [STYLE], params)
    assert info.value.code == "invalid_parameter"
    assert info.value.details["field"] == field
    assert field in info.value.message


def test_an_unknown_parameter_names_the_closest_and_the_known_ones(sq: StylequeueClient) -> None:
    with pytest.raises(BadRequestError) as info:
        sq.submit(CONTENT, [STYLE], {**TINY, "iteration": 5})
    error = info.value
    assert error.status == 400 and error.code == "invalid_parameter"
    assert error.details["field"] == "iteration"
    assert error.details["suggestion"] == "iterations"
    assert error.details["known"] == list(StyleParams.model_fields)
    assert error.message.startswith(
        "iteration: unknown parameter; did you mean iterations? known: "
    )
    assert ", ".join(StyleParams.model_fields) in error.message


def test_an_unknown_parameter_far_from_any_name_lists_them_without_a_guess(
    sq: StylequeueClient,
) -> None:
    with pytest.raises(BadRequestError) as info:
        sq.submit(CONTENT, [STYLE], {"colour": "red"})
    assert "suggestion" not in info.value.details and "did you mean" not in info.value.message
    assert (
        info.value.message
        == f"colour: unknown parameter; known: {', '.join(StyleParams.model_fields)}"
    )


def test_a_blend_of_one_weight_counts_it_in_the_singular(sq: StylequeueClient) -> None:
    with pytest.raises(BadRequestError) as info:
        sq.submit(CONTENT, [STYLE, STYLE], {**TINY, "style_blend": [1]})
    assert info.value.details["field"] == "style_blend"
    assert info.value.message == "style_blend: has 1 weight but there are 2 style images"


def test_an_upload_that_is_not_an_image_is_rejected(sq: StylequeueClient) -> None:
    with pytest.raises(BadRequestError) as info:
        sq.submit(b"this is not a picture", [STYLE], TINY)
    assert info.value.code == "invalid_image"


def test_wait_reports_progress_until_the_job_succeeds(
    sq: StylequeueClient, driver: JobDriver, png: Png, tmp_path: Path
) -> None:
    job = sq.submit(CONTENT, [STYLE], TINY)
    result = png(32, 24)
    seen: list[Job] = []
    thread = driver.in_background(lambda: driver.run(job.id, result=result, steps=4, step_s=0.1))
    final = sq.wait(
        job.id, poll_interval=0.01, max_poll_interval=0.02, timeout=30, on_progress=seen.append
    )
    join_checked(thread)
    assert final.status is JobStatus.SUCCEEDED and final.progress.percent == 100.0
    assert seen[-1].status is JobStatus.SUCCEEDED
    running = [j for j in seen if j.status is JobStatus.RUNNING]
    assert len(running) >= 2, "progress beats between claim and finish were reported"
    percents = [j.progress.percent for j in seen]
    assert percents == sorted(percents)
    assert any(j.progress.eta_seconds is not None for j in running)
    # The result: the stored PNG, byte for byte, through result() and download().
    assert sq.result(job.id) == result
    saved = sq.download(job.id, tmp_path / "out.png")
    with Image.open(io.BytesIO(saved.read_bytes())) as image:
        assert image.format == "PNG" and image.size == (32, 24)


def test_wait_returns_a_failed_job_with_its_error(sq: StylequeueClient, driver: JobDriver) -> None:
    job = sq.submit(CONTENT, [STYLE], TINY)
    driver.fail(job.id, code="out_of_memory", message="CUDA out of memory at 2048 px")
    final = sq.wait(job.id, poll_interval=0.01)
    assert final.status is JobStatus.FAILED
    assert final.error is not None and final.error.code == "out_of_memory"
    assert "2048" in final.error.message


def test_a_preview_is_not_found_before_the_worker_writes_one(sq: StylequeueClient) -> None:
    job = sq.submit(CONTENT, [STYLE], TINY)
    with pytest.raises(NotFoundError) as info:
        sq.preview(job.id)
    assert info.value.code == "no_preview"
