"""What the API returns, as frozen dataclasses parsed from its JSON.

Parsing is strict about the fields the API promises (a missing or mistyped one
raises InvalidResponseError naming it) and ignores fields it does not know, so
that an older client keeps working against a newer server.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from client.errors import InvalidResponseError


class JobStatus(enum.StrEnum):
    """The states of a job: queued → running → succeeded | failed | canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        """True when the job will not change any more."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


@dataclass(frozen=True)
class JobProgress:
    """How far a job's optimization is: iterations done, of how many, and an estimate."""

    iteration: int
    iterations: int
    percent: float
    eta_seconds: float | None


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a machine code and a message for humans."""

    code: str
    message: str


@dataclass(frozen=True)
class JobWarning:
    """Something the job's inputs may do badly, found when it was submitted: a stable
    ``code`` (``content_short_side``, ``content_upscaled``, ``style_upscaled``,
    ``content_alpha``, ``style_alpha``) and a ``message`` for people."""

    code: str
    message: str


@dataclass(frozen=True)
class JobMemory:
    """The job's estimated peak device memory (bytes; None: not estimated) and whether,
    queued, it is too big for every live worker (``largest_worker_budget_bytes``: then
    the largest live worker's budget). It stays queued until a bigger worker comes."""

    estimate_bytes: int | None = None
    fits_no_worker: bool = False
    largest_worker_budget_bytes: int | None = None


@dataclass(frozen=True)
class JobQueue:
    """A queued job's place: ``position`` 1 is the next to start (None: past the first
    1000); its expected start in seconds from when it was read and as a time (None: no
    position or no live worker), among ``live_workers`` workers."""

    position: int | None = None
    expected_start_seconds: float | None = None
    expected_start_at: datetime | None = None
    live_workers: int = 0


@dataclass(frozen=True)
class JobUrls:
    """The job's links, as the server gave them (paths or absolute URLs)."""

    self: str
    result: str
    preview: str
    cancel: str


@dataclass(frozen=True)
class Job:
    """One style-transfer job, as the API returned it at one moment."""

    id: str
    status: JobStatus
    params: Mapping[str, Any] = field(hash=False)
    progress: JobProgress
    attempts: int
    worker: str | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_seconds: float | None
    run_seconds: float | None
    urls: JobUrls
    # An exact repeat of an earlier succeeded job: its result is a copy, no worker ran it.
    cached: bool = False
    deadline_at: datetime | None = None  # canceled (deadline_exceeded) if not finished by then
    warnings: tuple[JobWarning, ...] = ()  # empty: none (or a server from before warnings)
    memory: JobMemory = JobMemory()  # all unknown from a server from before estimates
    # It shares the run of an identical job queued or running when it was submitted.
    shared: bool = False
    priority: int = 0  # orders the client's own queued jobs, higher first (-10..10)
    queue: JobQueue | None = None  # while queued (and the server tells): its place

    @classmethod
    def from_json(cls, data: Any) -> Job:
        """Parse the job JSON of the API; raise InvalidResponseError naming a bad field."""
        obj = _Fields(data, "job")
        progress = _Fields(obj.get("progress", Mapping, optional=True) or {}, "job.progress")
        error = obj.get("error", Mapping, optional=True)
        error_fields = _Fields(error, "job.error") if error is not None else None
        urls = _Fields(obj.get("urls", Mapping), "job.urls")
        status = obj.get("status", str)
        try:
            job_status = JobStatus(status)
        except ValueError:
            raise InvalidResponseError(f"job.status: unknown status {status!r}") from None
        return cls(
            id=str(obj.get("id", str | int)),
            status=job_status,
            params=MappingProxyType(dict(obj.get("params", Mapping))),
            progress=JobProgress(
                iteration=progress.get("iteration", int, optional=True) or 0,
                iterations=progress.get("iterations", int, optional=True) or 0,
                percent=float(progress.get("percent", int | float, optional=True) or 0.0),
                eta_seconds=_float_or_none(progress.get("eta_seconds", int | float, optional=True)),
            ),
            attempts=obj.get("attempts", int, optional=True) or 0,
            worker=obj.get("worker", str, optional=True),
            error=None
            if error_fields is None
            else JobError(
                code=error_fields.get("code", str), message=error_fields.get("message", str)
            ),
            created_at=obj.required_timestamp("created_at"),
            started_at=obj.timestamp("started_at", optional=True),
            finished_at=obj.timestamp("finished_at", optional=True),
            queue_seconds=_float_or_none(obj.get("queue_seconds", int | float, optional=True)),
            run_seconds=_float_or_none(obj.get("run_seconds", int | float, optional=True)),
            urls=JobUrls(
                self=urls.get("self", str),
                result=urls.get("result", str),
                preview=urls.get("preview", str),
                cancel=urls.get("cancel", str),
            ),
            cached=bool(obj.get("cached", bool, optional=True)),
            deadline_at=obj.timestamp("deadline_at", optional=True),
            warnings=_warnings(obj.get("warnings", list, optional=True) or []),
            memory=_memory(obj.get("memory", Mapping, optional=True) or {}),
            shared=bool(obj.get("shared", bool, optional=True)),
            priority=obj.get("priority", int, optional=True) or 0,
            queue=parse_queue(obj.get("queue", Mapping, optional=True)),
        )

    def to_json(self) -> dict[str, Any]:
        """The job as the API's JSON shape again (for ``--json`` output and logs)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "params": dict(self.params),
            "progress": {
                "iteration": self.progress.iteration,
                "iterations": self.progress.iterations,
                "percent": self.progress.percent,
                "eta_seconds": self.progress.eta_seconds,
            },
            "attempts": self.attempts,
            "cached": self.cached,
            "worker": self.worker,
            "error": None
            if self.error is None
            else {"code": self.error.code, "message": self.error.message},
            "created_at": self.created_at.isoformat(),
            "started_at": _iso_or_none(self.started_at),
            "finished_at": _iso_or_none(self.finished_at),
            "deadline_at": _iso_or_none(self.deadline_at),
            "queue_seconds": self.queue_seconds,
            "run_seconds": self.run_seconds,
            "urls": {
                "self": self.urls.self,
                "result": self.urls.result,
                "preview": self.urls.preview,
                "cancel": self.urls.cancel,
            },
            "warnings": [{"code": w.code, "message": w.message} for w in self.warnings],
            "memory": {
                "estimate_bytes": self.memory.estimate_bytes,
                "fits_no_worker": self.memory.fits_no_worker,
                "largest_worker_budget_bytes": self.memory.largest_worker_budget_bytes,
            },
            "shared": self.shared,
            "priority": self.priority,
            "queue": None
            if self.queue is None
            else {
                "position": self.queue.position,
                "expected_start_seconds": self.queue.expected_start_seconds,
                "expected_start_at": _iso_or_none(self.queue.expected_start_at),
                "live_workers": self.queue.live_workers,
            },
        }


@dataclass(frozen=True)
class JobPage:
    """One page of a job listing, newest first; ``next_cursor`` is None on the last page."""

    jobs: tuple[Job, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: Any) -> JobPage:
        """Parse ``{"jobs": [...], "next_cursor": ...}``."""
        obj = _Fields(data, "page")
        jobs = obj.get("jobs", list)
        return cls(
            jobs=tuple(Job.from_json(item) for item in jobs),
            next_cursor=obj.get("next_cursor", str, optional=True),
        )


class _Fields:
    """Typed access to one JSON object's fields, with errors that name the field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise InvalidResponseError(f"{where}: expected an object, got {type(data).__name__}")
        self._data = data
        self._where = where

    def get(self, name: str, kind: Any, *, optional: bool = False) -> Any:
        if name not in self._data or self._data[name] is None:
            if optional:
                return None
            raise InvalidResponseError(f"{self._where}.{name}: missing")
        value = self._data[name]
        # bool is an int in Python, but never a valid count or measure in this API.
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise InvalidResponseError(
                f"{self._where}.{name}: unexpected {type(value).__name__} {value!r}"
            )
        return value

    def required_timestamp(self, name: str) -> datetime:
        stamp = self.timestamp(name)
        assert stamp is not None  # timestamp() raises for a missing required field
        return stamp

    def timestamp(self, name: str, *, optional: bool = False) -> datetime | None:
        text = self.get(name, str, optional=optional)
        if text is None:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise InvalidResponseError(
                f"{self._where}.{name}: not an ISO 8601 time: {text!r}"
            ) from None


def _warnings(items: list[Any]) -> tuple[JobWarning, ...]:
    found = []
    for index, item in enumerate(items):
        warning = _Fields(item, f"job.warnings[{index}]")
        found.append(JobWarning(warning.get("code", str), warning.get("message", str)))
    return tuple(found)


def _memory(data: Mapping[str, Any]) -> JobMemory:
    memory = _Fields(data, "job.memory")
    return JobMemory(
        estimate_bytes=memory.get("estimate_bytes", int, optional=True),
        fits_no_worker=bool(memory.get("fits_no_worker", bool, optional=True)),
        largest_worker_budget_bytes=memory.get("largest_worker_budget_bytes", int, optional=True),
    )


def parse_queue(data: Mapping[str, Any] | None) -> JobQueue | None:
    """A job JSON's ``queue`` object (or a ``queue`` event's data); None for null."""
    if data is None:
        return None
    queue = _Fields(data, "job.queue")
    return JobQueue(
        position=queue.get("position", int, optional=True),
        expected_start_seconds=_float_or_none(
            queue.get("expected_start_seconds", int | float, optional=True)
        ),
        expected_start_at=queue.timestamp("expected_start_at", optional=True),
        live_workers=queue.get("live_workers", int, optional=True) or 0,
    )


def _float_or_none(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
