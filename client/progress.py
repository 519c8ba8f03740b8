"""A one-line text progress bar for a job, as pure functions (the CLI draws it on stderr)."""

from __future__ import annotations

import math

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
    )
