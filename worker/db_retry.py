"""Waiting for the database: a write tried again while the database cannot be reached.

A worker waits for the database (a restart, a failover) rather than drop its
message or its job; how long it may wait is the caller's ``give_up``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# While the database cannot be reached, a write is tried again after these
# pauses (doubling up to the last).
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 2.0
T = TypeVar("T")


class DatabaseWaitAbandoned(Exception):
    """``retry_while_unavailable`` gave up: the database did not answer in time."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, connection lost)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_while_unavailable(
    session: Session,
    write: Callable[[], T],
    *,
    what: str,
    give_up: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``write()``, tried again while the database cannot be reached, until ``give_up()``.

    Each failure rolls the session back (its connection is gone) and waits a
    little longer, up to DB_RETRY_MAX_SECONDS. Any other error is raised at once;
    DatabaseWaitAbandoned once ``give_up()`` says so.
    """
    delay = DB_RETRY_FIRST_SECONDS
    failures = 0
    while True:
        try:
            result = write()
        except SQLAlchemyError as exc:
            if not database_unavailable(exc):
                raise
            # On a connection SQLAlchemy has not marked dead yet, the rollback fails too.
            with contextlib.suppress(SQLAlchemyError):
                session.rollback()
            failures += 1
            if give_up():
                log.warning("could not %s: the database did not answer in time", what)
                raise DatabaseWaitAbandoned(what) from exc
            # The first failure with its cause, then a line now and then.
            if failures == 1 or failures % 30 == 0:
                log.warning(
                    "could not %s: the database cannot be reached (%s); trying again",
                    what,
                    exc.__class__.__name__,
                    exc_info=failures == 1,
                )
            sleep(delay)
            delay = min(2 * delay, DB_RETRY_MAX_SECONDS)
            continue
        if failures:
            log.info("%s: done after %d failed tries (the database is back)", what, failures)
        return result
