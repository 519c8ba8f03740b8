"""The admin API's JSON shapes (pydantic, for /openapi.json and tests) and its paths."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.schemas import JobOut
from api.spec_parts import JOB_ID, LIMIT, cursor, error_responses, json_response
from shared.models import JobStatus
from shared.stats import DEFAULT_STATS_HOURS, MAX_STATS_HOURS


class ClientRef(BaseModel):
    id: int
    name: str


class AdminUrls(BaseModel):
    self_: str = Field(alias="self")
    cancel: str
    retry: str
    files: str = Field(description="DELETE it to remove the job's files.")


class AdminJobOut(JobOut):
    """A job as the client API shows it, with its client and the admin actions' URLs."""

    client: ClientRef
    admin_urls: AdminUrls


class AdminJobList(BaseModel):
    jobs: list[AdminJobOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class TimelineEventOut(BaseModel):
    at: datetime
    kind: str = Field(
        description="created, claimed, resumed, checkpoint, cancel_requested, released, "
        "requeued, enqueue_failed, retried, succeeded, failed, canceled, files_deleted."
    )
    attempt: int = Field(description="The attempt it belongs to; 0 before the first claim.")
    worker: str | None
    data: dict[str, Any] = Field(
        description="e.g. iteration for checkpoint, resumed, released; by (the admin's name) "
        "and admin_client_id for what an admin did (cancel, retry, files_deleted)."
    )


class AdminJobDetailOut(AdminJobOut):
    """A job with its whole history, oldest event first."""

    n_styles: int
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    updated_at: datetime
    files_deleted: bool
    cached_from: uuid.UUID | None = Field(
        description="The job whose result this one's is a copy of (cached); null otherwise."
    )
    follows: uuid.UUID | None = Field(
        default=None,
        description="The identical job whose run this one shares (the one that ran the "
        "computation); null when it runs its own.",
    )
    followers: list[uuid.UUID] = Field(
        default_factory=list, description="The jobs that share this job's run, oldest first."
    )
    events: list[TimelineEventOut]


class PercentilesOut(BaseModel):
    count: int
    p50: float | None
    p95: float | None


class HourBucketOut(BaseModel):
    hour_start: datetime
    created: int
    finished: int


class SeriesBucketOut(BaseModel):
    start: datetime = Field(description="The bucket's start, UTC (an hour, or a day).")
    hours: int = Field(description="1 or 24.")
    created: int
    succeeded: int
    failed: int
    canceled: int
    queued: int = Field(description="Jobs waiting for their first start at the bucket's end.")


class WorkerStatsOut(BaseModel):
    worker: str
    succeeded: int
    failed: int
    canceled: int
    run_seconds: PercentilesOut


class StatsOut(BaseModel):
    """Counts by status over all time; the rest over jobs finished in the window."""

    now: datetime
    hours: int
    window_start: datetime = Field(description="The start of the hour hours-1 before now's.")
    counts: dict[str, int]
    total: int
    per_hour: list[HourBucketOut]
    succeeded: int
    failed: int
    canceled: int
    failure_rate: float | None = Field(description="failed / (succeeded + failed) in the window.")
    queue_seconds: PercentilesOut = Field(description="Created to first start.")
    run_seconds: PercentilesOut = Field(description="First start to finish, succeeded jobs.")
    workers: list[WorkerStatsOut]
    bucket_hours: int = Field(description="1 up to a 48 h window, 24 past that.")
    buckets: list[SeriesBucketOut] = Field(
        description="The window by hour (or by day): created, finished by outcome, queue depth."
    )


class WorkerOut(BaseModel):
    name: str
    hostname: str
    pid: int
    device: str
    device_name: str | None
    device_memory_bytes: int | None
    started_at: datetime
    last_heartbeat_at: datetime
    current_job_id: uuid.UUID | None
    jobs_done: int
    jobs_failed: int
    alive: bool
    device_memory_used_bytes: int | None = Field(
        description="What the process holds on its GPU as of its last beat; null on the CPU."
    )
    running_job_ids: list[uuid.UUID] = Field(
        description="Every job running under this live worker's lease, oldest start first: "
        "more than one when it runs a batch (STYLEQUEUE_BATCH_MAX); empty for a gone worker."
    )


class WorkerList(BaseModel):
    workers: list[WorkerOut]


ADMIN_MODELS: list[type[BaseModel]] = [AdminJobList, AdminJobDetailOut, StatsOut, WorkerList]


def admin_paths() -> dict[str, Any]:
    """The admin endpoints for /openapi.json."""

    def errors(*statuses: int) -> dict[str, Any]:
        return error_responses(*statuses, s404="No such job.")

    detail = json_response("AdminJobDetailOut", "The job with its timeline.")
    query = [
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string"},
            "description": "One or more of "
            f"{', '.join(s.value for s in JobStatus)}: repeated, or comma-separated.",
        },
        {"name": "client_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {
            "name": "worker",
            "in": "query",
            "schema": {"type": "string"},
            "description": "The worker that ran the job last (hostname/pid).",
        },
        {
            "name": "created_from",
            "in": "query",
            "schema": {"type": "string", "format": "date-time"},
            "description": "Inclusive; ISO 8601 with a zone.",
        },
        {
            "name": "created_to",
            "in": "query",
            "schema": {"type": "string", "format": "date-time"},
            "description": "Exclusive; ISO 8601 with a zone.",
        },
        LIMIT,
        cursor("next_cursor of the previous page (same filters)."),
    ]
    return {
        "/v1/admin/jobs": {
            "get": {
                "operationId": "adminListJobs",
                "summary": "Every client's jobs, newest first, filtered (admin)",
                "parameters": query,
                "responses": {
                    "200": json_response("AdminJobList", "A page of jobs."),
                    **errors(400, 401, 403),
                },
            }
        },
        "/v1/admin/jobs/{job_id}": {
            "get": {
                "operationId": "adminGetJob",
                "summary": "A job with its event timeline (admin)",
                "parameters": [JOB_ID],
                "responses": {"200": detail, **errors(401, 403, 404)},
            }
        },
        "/v1/admin/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "adminCancelJob",
                "summary": "Cancel any client's queued or running job (idempotent; admin)",
                "parameters": [JOB_ID],
                "responses": {"200": detail, **errors(401, 403, 404)},
            }
        },
        "/v1/admin/jobs/{job_id}/retry": {
            "post": {
                "operationId": "adminRetryJob",
                "summary": "Queue a failed or canceled job again (admin)",
                "parameters": [JOB_ID],
                "responses": {"200": detail, **errors(401, 403, 404, 409)},
            }
        },
        "/v1/admin/jobs/{job_id}/files": {
            "delete": {
                "operationId": "adminDeleteJobFiles",
                "summary": "Remove a finished job's files; the row and history stay (admin)",
                "parameters": [JOB_ID],
                "responses": {"200": detail, **errors(401, 403, 404, 409)},
            }
        },
        "/v1/admin/stats": {
            "get": {
                "operationId": "adminStats",
                "summary": "Counts, throughput, wait and run time percentiles, per worker (admin)",
                "parameters": [
                    {
                        "name": "hours",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_STATS_HOURS,
                            "default": DEFAULT_STATS_HOURS,
                        },
                    }
                ],
                "responses": {
                    "200": json_response("StatsOut", "The statistics."),
                    **errors(400, 401, 403),
                },
            }
        },
        "/v1/admin/workers": {
            "get": {
                "operationId": "adminWorkers",
                "summary": "Live workers: last heartbeat, current job, jobs done, device (admin)",
                "parameters": [
                    {
                        "name": "all",
                        "in": "query",
                        "schema": {"type": "boolean", "default": False},
                        "description": "true: dead workers too (alive false).",
                    }
                ],
                "responses": {
                    "200": json_response("WorkerList", "The workers."),
                    **errors(400, 401, 403),
                },
            }
        },
    }
