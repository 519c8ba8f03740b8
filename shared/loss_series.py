"""A job's loss curve, compact: at most ``MAX_POINTS`` points per attempt, in ``job_losses``.

The worker feeds every iteration's losses to a ``LossSeries`` and writes it
(``save_losses``) every few seconds and once the attempt ends; the series keeps
evenly spaced iterations, halving what it keeps whenever it would pass
``MAX_POINTS``, and always the latest one. ``read_losses`` gives every attempt's
points to the /admin job page, which draws them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import JobLosses, utcnow

MAX_POINTS = 200
SIGNIFICANT_DIGITS = 6

Point = list[float]  # [iteration, loss, content_loss, style_loss, tv_loss]


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


class LossSeries:
    """One attempt's losses, downsampled as they come (one thread feeds it)."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError("a loss series keeps at least 2 points")
        self._max = max_points
        self._kept: list[Point] = []
        self._stride = 1  # keep every stride-th point reported
        self._seen = 0
        self._latest: Point | None = None

    def add(self, iteration: int, loss: float, content: float, style: float, tv: float) -> None:
        point = [float(iteration), *(_round(v) for v in (loss, content, style, tv))]
        self._latest = point
        if self._seen % self._stride == 0:
            self._kept.append(point)
            if len(self._kept) >= self._max:  # room for the latest at the end
                self._kept = self._kept[::2]
                self._stride *= 2
        self._seen += 1

    def points(self) -> list[Point]:
        """The kept points, by iteration, ending with the latest one reported."""
        if self._latest is None:
            return []
        if self._kept and self._kept[-1] is self._latest:
            return list(self._kept)
        return [*self._kept, self._latest]

    def __len__(self) -> int:
        return self._seen


def save_losses(session: Session, job_id: uuid.UUID, attempt: int, points: Sequence[Point]) -> None:
    """Write (or replace) one attempt's points and commit. Only its own worker writes them."""
    row = session.get(JobLosses, (job_id, attempt))
    if row is None:
        session.add(JobLosses(job_id=job_id, attempt=attempt, points=list(points)))
    else:
        row.points = list(points)
        row.updated_at = utcnow()
    session.commit()


@dataclass(frozen=True)
class AttemptLosses:
    attempt: int
    points: list[Point]


def read_losses(session: Session, job_id: uuid.UUID) -> list[AttemptLosses]:
    """Every attempt's points, by attempt (an attempt that reported none is left out)."""
    rows = session.execute(
        select(JobLosses.attempt, JobLosses.points)
        .where(JobLosses.job_id == job_id)
        .order_by(JobLosses.attempt)
    )
    return [AttemptLosses(int(a), [list(p) for p in points]) for a, points in rows if points]


def has_losses(session: Session, job_id: uuid.UUID) -> bool:
    """Whether any attempt of the job reported its losses."""
    found = session.scalar(select(JobLosses.attempt).where(JobLosses.job_id == job_id).limit(1))
    return found is not None
