"""Time arithmetic in SQL, written once for each database the service runs on.

PostgreSQL and SQLite spell durations differently (intervals and ``date_part``
against Julian days and ``strftime``). The statistics (``shared.stats``) and
the metrics figures (``shared.metrics_figures``) build their queries from these
expressions and never test the dialect themselves.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, cast, func, text
from sqlalchemy.orm import Session

POSTGRESQL = "postgresql"


def dialect_of(session: Session) -> str:
    """The name of the database behind ``session``: "postgresql" or "sqlite"."""
    return session.get_bind().dialect.name


def seconds_between(dialect: str, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in seconds, as a float."""
    if dialect == POSTGRESQL:
        # date_part is double precision; EXTRACT would be numeric, several times slower.
        return func.date_part("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def at_most(dialect: str, start: Any, end: Any, seconds: float) -> ColumnElement[bool]:
    """``end - start <= seconds``: on PostgreSQL an interval comparison (no conversion per row)."""
    if dialect == POSTGRESQL:
        return (end - start) <= timedelta(seconds=seconds)
    return seconds_between(dialect, start, end) <= seconds


def hour_number(dialect: str, column: Any) -> ColumnElement[Any]:
    """Whole hours since the epoch (UTC) of a timestamp column."""
    if dialect == POSTGRESQL:
        # Float arithmetic: extract() gives numeric, slow over many rows.
        return func.floor(cast(func.extract("epoch", column), Float) / 3600.0)
    return cast(func.strftime("%s", column), Integer) // 3600


def disable_jit(session: Session) -> None:
    """Turn PostgreSQL's JIT off for the rest of this session's transaction.

    Compiling a query with many expressions per row can cost more than running
    it; ``SET LOCAL`` ends with the transaction. Nothing to do elsewhere.
    """
    if dialect_of(session) == POSTGRESQL:
        session.execute(text("SET LOCAL jit = off"))
