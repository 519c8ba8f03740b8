"""The API's JSON shapes as pydantic models; ``/openapi.json`` is generated from them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.spec_examples import WARNINGS_EXAMPLE
from shared.input_warnings import MAX_UPSCALE, SHORT_SIDE_PX
from shared.job_view import JobView, job_timings
from shared.memory_fit import LiveBudgets, memory_dict
from shared.models import JobStatus, utcnow
from shared.params import StyleParams
from shared.queue_position import QueueSnapshot


class Progress(BaseModel):
    iteration: int = Field(description="Optimizer iterations done, over all passes.")
    iterations: int = Field(description="Optimizer iterations in all.")
    percent: float = Field(ge=0, le=100)
    eta_seconds: float | None = Field(description="Estimated seconds left; null until known.")


class JobErrorInfo(BaseModel):
    code: str = Field(description="Machine-readable, e.g. out_of_memory, invalid_image.")
    message: str


class JobMemory(BaseModel):
    """The job's estimated peak device memory, and whether any live worker can take it."""

    estimate_bytes: int | None = Field(
        description="Its estimated peak memory on a GPU, bytes (from its size, optimizer and "
        "styles); a worker claims it only if this fits the worker's budget. Null: not "
        "estimated (a job from before estimates), any worker may take it."
    )
    fits_no_worker: bool = Field(
        description="True while it is queued and its estimate is over the budget of every "
        "live worker: it stays queued until a worker with more memory comes (or is "
        "canceled). False otherwise, also when no worker is live at all."
    )
    largest_worker_budget_bytes: int | None = Field(
        description="When fits_no_worker: the largest live worker's budget, bytes; else null."
    )


class JobQueue(BaseModel):
    """A queued job's place in the fair order and when it is expected to start."""

    position: int | None = Field(
        description="1: the next job to start (on the next worker that frees up), 2: the one "
        "after, ... in the order the workers claim in (clients by weighted fair share, a "
        "client's own jobs by priority, then age). Null past the first 1000."
    )
    expected_start_seconds: float | None = Field(
        description="Seconds from now until it is expected to start: the live workers played "
        "forward, each running job to its reported ETA, each job ahead for its expected run "
        "time (seconds per iteration measured on the latest jobs that succeeded). Null "
        "without a position or with no live worker. Jobs submitted later may still go "
        "ahead (another client's, a higher priority)."
    )
    expected_start_at: datetime | None = Field(description="Now plus expected_start_seconds.")
    live_workers: int = Field(description="The workers the estimate shares the queue among.")


class JobWarning(BaseModel):
    """Something the job's inputs may do badly, found when it was submitted."""

    code: str = Field(
        description="Stable, for programs: content_short_side (the output's shorter side "
        f"is under {SHORT_SIDE_PX} px: the content's structure is lost), content_upscaled "
        f"and style_upscaled (an image enlarged more than {MAX_UPSCALE:g} times to the size "
        "it is used at: a blurry result or texture), content_alpha (transparent areas are "
        "stylized as if white and stay transparent in the output), style_alpha (a style's "
        "transparent areas count as white paint)."
    )
    message: str = Field(description="For people: what will happen, and what would help.")


class JobUrls(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    result: str
    preview: str
    cancel: str


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: uuid.UUID
    status: JobStatus
    params: StyleParams = Field(description="The job's parameters, every default filled in.")
    progress: Progress
    attempts: int = Field(description="How many times a worker has claimed the job.")
    cached: bool = Field(
        description="True when the job is an exact repeat of an earlier succeeded job (the "
        "same input bytes, parameters, engine version and weights) and its result is a copy "
        "of that job's: succeeded at once, claimed by no worker (attempts 0). Submit with "
        "the form field cache=false to have it computed instead."
    )
    shared: bool = Field(
        default=False,
        description="True when the job shares the run of an identical job (the same inputs, "
        "parameters, engine version and weights) that was queued or running when it was "
        "submitted: its progress is that run's, and it ends when that run ends (succeeded "
        "with a copy of the result, or failed with the same error). Canceling it leaves the "
        "other job running; canceling the other leaves this one to run the computation.",
    )
    worker: str | None = Field(description="The worker that ran it last.")
    error: JobErrorInfo | None = Field(description="Why it failed; null unless failed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None = Field(
        description="When the job is canceled (error deadline_exceeded) if it has not "
        "finished: the submit's Cancel-After; null: never."
    )
    queue_seconds: float = Field(description="Seconds from submit to start (so far, if queued).")
    run_seconds: float | None = Field(description="Seconds running (so far, if running).")
    urls: JobUrls
    warnings: list[JobWarning] = Field(
        description="What the inputs may do badly (an elongated or small content, a small "
        "style, transparency), found at submit; empty when all is well.",
        examples=[WARNINGS_EXAMPLE],
    )
    memory: JobMemory
    priority: int = Field(
        default=0,
        description="The submit's priority, -10..10: orders the client's own queued jobs, "
        "higher first (other clients' jobs are ordered by fair share, not by it).",
    )
    queue: JobQueue | None = Field(
        default=None, description="While queued: its place in the queue; null otherwise."
    )

    @classmethod
    def from_job(
        cls,
        job: JobView,
        now: datetime | None = None,
        budgets: LiveBudgets | None = None,
        queue: QueueSnapshot | None = None,
    ) -> JobOut:
        now = now or utcnow()
        base = f"/v1/jobs/{job.id}"
        timings = job_timings(job.created_at, job.started_at, job.finished_at, now)
        error = None
        if job.error_code is not None:
            error = JobErrorInfo(code=job.error_code, message=job.error_message or "")
        return cls(
            id=job.id,
            status=job.status,
            params=StyleParams.model_validate(job.params),
            progress=Progress(
                iteration=job.iteration,
                iterations=job.iterations,
                percent=job.percent,
                eta_seconds=job.eta_seconds,
            ),
            attempts=job.attempts,
            cached=job.cached,
            shared=job.follows is not None,
            worker=job.worker,
            error=error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            deadline_at=job.deadline_at,
            queue_seconds=timings.queue_seconds,
            run_seconds=timings.run_seconds,
            urls=JobUrls.model_validate(
                {
                    "self": base,
                    "result": f"{base}/result",
                    "preview": f"{base}/preview",
                    "cancel": f"{base}/cancel",
                }
            ),
            warnings=[JobWarning.model_validate(w) for w in job.warnings],
            memory=JobMemory.model_validate(memory_dict(job.memory_estimate, job.status, budgets)),
            priority=job.priority,
            queue=None
            if queue is None or job.status is not JobStatus.QUEUED
            else JobQueue.model_validate(queue.queue_dict(job.id, job.follows, now)),
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class ErrorInfo(BaseModel):
    code: str = Field(description="Machine-readable error code.")
    message: str = Field(description="For humans.")
    details: dict[str, Any] = Field(description="e.g. the field that is wrong.")


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    error: ErrorInfo


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class JobSubmission(BaseModel):
    """The multipart form of ``POST /v1/jobs`` (documentation only: files are read by Flask)."""

    content: bytes = Field(description="The content photo (any format Pillow reads).")
    style: list[bytes] = Field(description="One or more style images, in blend order.")
    params: StyleParams | None = Field(None, description="JSON text; omitted fields get defaults.")
