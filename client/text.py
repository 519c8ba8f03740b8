"""Jobs as plain text, as pure functions: the progress line, a description, a table,
what a cancel did, an image problem naming the file, an input warning.

The command line prints these; a program using the client may too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime

from client.models import Job, JobStatus

DEFAULT_BAR_WIDTH = 30  # characters between the brackets


def format_duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``, rounded up to the second; ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def render_bar(fraction: float, width: int = DEFAULT_BAR_WIDTH) -> str:
    """``[#####.....]`` filled to ``fraction`` (clamped to 0..1)."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = math.floor(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_progress(job: Job, width: int = DEFAULT_BAR_WIDTH) -> str:
    """One line for a job: bar, percent, iteration, ETA and status.

    A queued job shows an empty bar and no ETA; a succeeded job a full bar.
    """
    progress = job.progress
    percent = 100.0 if job.status is JobStatus.SUCCEEDED else progress.percent
    iterations = progress.iterations or int(job.params.get("iterations", 0) or 0)
    iteration = iterations if job.status is JobStatus.SUCCEEDED else progress.iteration
    eta = progress.eta_seconds if job.status is JobStatus.RUNNING else None
    return (
        f"{render_bar(percent / 100.0, width)} {percent:5.1f}%"
        f"  it {iteration}/{iterations}"
        f"  ETA {format_duration(eta)}"
        f"  {job.status.value}"
        + (f" ({place})" if job.status is JobStatus.QUEUED and (place := format_place(job)) else "")
    )


def format_place(job: Job) -> str:
    """A queued job's place, e.g. ``#3, starts in ~0:42``; empty when the server gave none."""
    queue = job.queue
    if queue is None or queue.position is None:
        return ""
    if queue.expected_start_seconds is None:
        when = "no worker is live" if queue.live_workers == 0 else "start unknown"
    else:
        when = f"starts in ~{format_duration(queue.expected_start_seconds)}"
    return f"#{queue.position}, {when}"


def _when(job_time: datetime | None) -> str:
    return "-" if job_time is None else job_time.isoformat(sep=" ", timespec="seconds")


def describe_job(job: Job) -> str:
    """A few lines about one job, for people."""
    lines = [
        f"id        {job.id}",
        f"status    {job.status.value}",
        f"progress  {format_progress(job)}",
        f"attempts  {job.attempts}" + (f"  (worker {job.worker})" if job.worker else ""),
        *(["cached    yes: a copy of an earlier, identical job's result"] if job.cached else []),
        *(["shared    yes: it shares the run of an identical job"] if job.shared else []),
        *(_queue_lines(job) if job.status is JobStatus.QUEUED else []),
        f"created   {_when(job.created_at)}",
        f"started   {_when(job.started_at)}",
        f"finished  {_when(job.finished_at)}",
        f"waited    {format_duration(job.queue_seconds)}   ran {format_duration(job.run_seconds)}",
    ]
    if job.error is not None:
        lines.append(f"error     {job.error.code}: {job.error.message}")
    lines += [f"warning   {w.code}: {w.message}" for w in job.warnings]
    if job.memory.fits_no_worker and job.memory.estimate_bytes is not None:
        budget = job.memory.largest_worker_budget_bytes or 0
        lines.append(
            f"memory    needs about {job.memory.estimate_bytes / 2**20:.0f} MiB; no live worker "
            f"has that much (the largest: {budget / 2**20:.0f} MiB): it waits for one"
        )
    return "\n".join(lines)


def _queue_lines(job: Job) -> list[str]:
    queue = job.queue
    if queue is None:
        return []
    if queue.position is None:
        return ["queue     behind the first 1000 queued jobs"]
    lines = [f"queue     position {queue.position} (1: the next to start)"]
    if queue.expected_start_seconds is not None and queue.expected_start_at is not None:
        lines.append(
            f"expected  to start in ~{format_duration(queue.expected_start_seconds)}"
            f" ({_when(queue.expected_start_at)}; {queue.live_workers} live worker"
            f"{'' if queue.live_workers == 1 else 's'})"
        )
    elif queue.live_workers == 0:
        lines.append("expected  no worker is live: it starts once one is")
    return lines


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


def job_table(jobs: Sequence[Job]) -> str:
    """One line per job: id, status, percent, created time."""
    rows = [("ID", "STATUS", "PROGRESS", "CREATED")]
    rows += [
        (job.id, job.status.value, f"{job.progress.percent:.0f}%", _when(job.created_at))
        for job in jobs
    ]
    return text_table(rows)


def describe_cancel(job: Job) -> str:
    """What a cancel did, from the job the server answered with.

    A queued job is canceled at once. A running one is asked to stop: its worker
    reads the request at its next heartbeat (about a second) and stops after the
    iteration it is on. A job that had already finished stays as it was.
    """
    if job.status is JobStatus.CANCELED:
        return f"job {job.id} canceled"
    if not job.status.is_final:
        return (
            f"cancel requested: job {job.id} is {job.status.value}; its worker sees the request "
            "within about a second and stops after the iteration it is on, then the job is canceled"
        )
    return f"job {job.id} had already {job.status.value}; there was nothing to cancel"


def describe_image_problem(field: str, path: str | os.PathLike[str], message: str) -> str:
    """``content image photo.jpg: the file is empty``: an image's error, naming its file.

    ``field`` is the part the error is about (``content``, ``style``, or the
    API's ``style[i]``); ``message`` the decoder's or the server's, which starts
    with ``FIELD: `` (dropped: the role and the path say it).
    """
    role = "content image" if field == "content" else "style image"
    return f"{role} {os.fspath(path)}: {message.removeprefix(f'{field}: ')}"


def warning_line(message: str) -> str:
    """``warning: <message>``: how the commands print what the inputs may do badly."""
    return f"warning: {message}"
