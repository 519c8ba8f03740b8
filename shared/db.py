"""Database engines and sessions, one ``Database`` per process (created after any fork)."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import ServiceUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 10_000  # API and worker processes write the same file
# No pre-ping: it would cost a round trip on every request. After a PostgreSQL
# restart the first query on a dead connection fails (a 503), and SQLAlchemy
# then drops every pooled connection at once.
POOL_RECYCLE_SECONDS = 3600
# A PostgreSQL host that vanished (no RST: a dead machine, a moving failover
# address) would hold connect() for minutes of TCP retries, and with it every API
# thread and the worker's heartbeat. Past this a connection attempt is a 503 /
# a failed heartbeat. A connect_timeout in the URL wins.
CONNECT_TIMEOUT_SECONDS = 5
# A client that vanishes in the middle of a transaction (a worker machine cut off
# or powered off between a heartbeat's UPDATE and its COMMIT) leaves its session
# holding the job's row: the next claim and the reconciler's sweep wait behind it.
# The server learns that a client is gone only from TCP: by the kernel's defaults
# after about 15 minutes of resending its last answer (which the client had not
# acknowledged yet), or two hours and more on an idle connection. Each connection
# sets the server's side for itself: data unacknowledged for 16 s, or an idle
# client that misses its keepalive probes (10 s, then every 2 s), and the server
# drops the connection, rolling its transaction back; under the 20 s lease.
# Settings the server does not know (tcp_user_timeout before PostgreSQL 12) are
# left out; PostgreSQL ignores them all on a unix socket.
SERVER_TCP_SETTINGS = {
    "tcp_user_timeout": "16000",  # milliseconds
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}
SERVER_TCP_SQL = (
    "SELECT set_config(s.name, v.setting, false) FROM pg_settings s JOIN (VALUES "
    + ", ".join(f"('{name}', '{value}')" for name, value in SERVER_TCP_SETTINGS.items())
    + ") AS v(name, setting) ON s.name = v.name"
)


def normalize_database_url(url: str) -> str:
    """Use the psycopg 3 driver for plain ``postgresql://`` (and Heroku-style ``postgres://``) URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, pool_size: int | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout so processes can share it.

    ``pool_size``: the connections kept open (SQLAlchemy's default, 5, when None), beside
    its overflow of 10 more."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    sizing = {} if pool_size is None else {"pool_size": pool_size}
    engine = create_engine(
        url, pool_recycle=POOL_RECYCLE_SECONDS, connect_args=_connect_timeout(url), **sizing
    )
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _configure_postgresql)
    return engine


def _connect_timeout(url: str) -> dict[str, Any]:
    if not url.startswith("postgresql") or "connect_timeout=" in url:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


def _configure_postgresql(dbapi_connection: Any, _record: Any) -> None:
    # Outside a transaction, so that the settings last for the session.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute(SERVER_TCP_SQL)
    finally:
        dbapi_connection.autocommit = autocommit


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _dispose_after_fork(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


class CommitOutcomeUnknownError(ServiceUnavailableError):
    """The connection was lost while the database committed: the writes may or may not be in.

    A 503 like any other outage, but whoever wrote must not undo what goes with
    the rows (a job's input files), and the client must retry with the same
    Idempotency-Key to learn which it was.
    """


COMMIT_LOST_MESSAGE = (
    "the database connection was lost while committing: the job may or may not "
    "have been created; retry with the same Idempotency-Key to find out"
)


class ThreadConnections:
    """One autocommit DBAPI (psycopg) connection per thread, for the poll and the submit
    (``shared.job_store`` holds their statements and is the only caller).

    A poll through SQLAlchemy cost ~200 µs of CPU: a pool checkout and return,
    the execution context and the result machinery around a ~40 µs query (and
    a submit's two INSERTs as much again). Here each gunicorn thread keeps its
    own connection and runs the statements prepared, straight on the driver.
    The database is still read and written every time, as before.
    PostgreSQL only (SQLite keeps the Core path). A connection that fails is
    dropped and the read retried once on a new one (a read is safe to repeat):
    after a PostgreSQL restart the first poll still succeeds.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()

    def fetch_one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """The first row of ``sql`` (with %s placeholders), or None."""
        rows = self._read(sql, params, one=True)
        return rows[0] if rows else None

    def fetch_all(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of ``sql`` (with %s placeholders)."""
        return self._read(sql, params, one=False)

    def _read(self, sql: str, params: Sequence[Any], *, one: bool) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            connection = self._connection(fresh=attempt > 0)
            try:
                cursor = connection.execute(sql, params, prepare=True)
                if one:
                    row = cursor.fetchone()
                    return [] if row is None else [row]
                rows: list[tuple[Any, ...]] = cursor.fetchall()
                return rows
            except self._engine.dialect.loaded_dbapi.OperationalError:
                self._discard()
        raise ServiceUnavailableError(
            "the database cannot be reached", details={"database": "OperationalError"}
        )

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run ``statements`` in one transaction on this thread's connection.

        A connection found dead before COMMIT is replaced and the transaction
        run again (the server rolled the first one back); one lost during COMMIT
        is a 503 (CommitOutcomeUnknownError), since the outcome is unknown. A
        constraint violation is raised as SQLAlchemy's IntegrityError, as the
        Session would raise it.
        """
        dbapi = self._engine.dialect.loaded_dbapi
        for attempt in range(2):
            connection = self._connection(fresh=attempt > 0)
            committing = False
            try:
                with connection.transaction():
                    for sql, params in statements:
                        connection.execute(sql, params, prepare=True)
                    committing = True
                return
            except dbapi.IntegrityError as exc:
                raise IntegrityError(exc.__class__.__name__, None, exc) from exc
            except dbapi.OperationalError:
                self._discard()
                if committing:
                    raise CommitOutcomeUnknownError(
                        COMMIT_LOST_MESSAGE, details={"database": "OperationalError"}
                    ) from None
        raise ServiceUnavailableError(
            "the database cannot be reached", details={"database": "OperationalError"}
        )

    def _connection(self, *, fresh: bool) -> Any:
        # Keyed by pid too: a connection must never cross a fork (gunicorn, Celery).
        held: tuple[int, Any] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and not fresh and not held[1].closed:
            return held[1]
        self._discard()
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        cparams = {**_connect_timeout(str(self._engine.url)), **cparams}
        try:
            connection = self._engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
        except self._engine.dialect.loaded_dbapi.OperationalError as exc:
            raise ServiceUnavailableError(
                "the database cannot be reached", details={"database": exc.__class__.__name__}
            ) from None
        connection.autocommit = True
        try:
            connection.execute(SERVER_TCP_SQL)
        except self._engine.dialect.loaded_dbapi.OperationalError as exc:
            connection.close()
            raise ServiceUnavailableError(
                "the database cannot be reached", details={"database": exc.__class__.__name__}
            ) from None
        self._local.held = (os.getpid(), connection)
        return connection

    def _discard(self) -> None:
        held: tuple[int, Any] | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held[0] == os.getpid():
            held[1].close()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._discard()


class Database:
    """An engine and its session factories: ``sessions`` for writes, ``read_sessions`` for reads.

    Reads run each statement in autocommit mode: a poll costs one round trip
    (the SELECT) instead of three (BEGIN, SELECT, ROLLBACK). ``read_engine``
    serves the hottest read (a poll) without the ORM.
    """

    def __init__(self, url: str, pool_size: int | None = None) -> None:
        self.engine = make_engine(url, pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self.thread_connections = (
            ThreadConnections(self.engine) if self.engine.dialect.name == "postgresql" else None
        )
        # A forked child (gunicorn, Celery prefork) must not reuse the parent's sockets.
        os.register_at_fork(after_in_child=partial(_dispose_after_fork, weakref.ref(self.engine)))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back on error and is always closed; the caller commits."""
        session = self.sessions()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise ServiceUnavailableError unless the database answers ``SELECT 1``."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise ServiceUnavailableError(
                "the database cannot be reached",
                details={"database": exc.__class__.__name__},
            ) from None

    def dispose(self) -> None:
        if self.thread_connections is not None:
            self.thread_connections.close()
        self.engine.dispose()
