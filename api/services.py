"""What the views use, built once per app: database, storage, Celery, Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis
from celery import Celery
from flask import Flask, current_app, g
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session

from shared.celery_app import create_celery
from shared.celery_wire import JobPublisher
from shared.db import Database
from shared.queue_position import QueueCache, QueueSnapshot
from shared.rate_limit import RateBucket
from shared.redis_conn import redis_client
from shared.settings import Settings
from shared.storage import Storage, open_storage

EXTENSION_KEY = "stylequeue"
REDIS_TIMEOUT_SECONDS = 1.0  # readiness must answer fast, up or down
# The submit's rate check: one try, soon given up, so that a Redis outage costs a submit
# at most this (it is let through: shared.client_limits).
RATE_LIMIT_TIMEOUT_SECONDS = 0.5


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    celery: Celery
    publisher: JobPublisher  # submits enqueue through this: one LPUSH each
    redis: redis.Redis
    rate_bucket: RateBucket  # every client's submit rate, in that Redis
    # Queued jobs' places in the fair order, read at most once a second (shared.queue_position).
    queue: QueueCache = field(default_factory=QueueCache)

    @classmethod
    def init_app(cls, app: Flask, settings: Settings) -> Services:
        rate_redis = redis_client(
            settings, timeout=RATE_LIMIT_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0)
        )
        services = cls(
            settings=settings,
            db=Database(settings.database_url),
            storage=open_storage(settings),
            celery=create_celery(settings),
            publisher=JobPublisher(settings),
            redis=redis_client(settings, timeout=REDIS_TIMEOUT_SECONDS),
            rate_bucket=RateBucket(rate_redis, settings.redis_prefix),
        )
        app.extensions[EXTENSION_KEY] = services
        app.teardown_appcontext(_close_session)
        return services


def services() -> Services:
    """The current app's services."""
    found: Services = current_app.extensions[EXTENSION_KEY]
    return found


def queue_snapshot(
    session: Session | Callable[[], Session], newest: datetime | None = None
) -> QueueSnapshot:
    """The fair order of this deployment's key space, with each queued job's place, read
    at most once a second per process (``shared.queue_position``; ``newest``: the newest
    job shown was created then, sooner if the snapshot is older)."""
    svc = services()
    return svc.queue.get(
        session,
        queue_name=svc.settings.redis_prefix,
        max_attempts=svc.settings.max_attempts,
        newest=newest,
    )


def db_session() -> Session:
    """This request's database session for writes, opened on first use, closed at teardown."""
    return _session("db_session", services().db.sessions)


def read_session() -> Session:
    """This request's autocommit session for reads (one round trip per query)."""
    return _session("db_read_session", services().db.read_sessions)


def _session(name: str, factory: Callable[[], Session]) -> Session:
    session: Session | None = g.get(name)
    if session is None:
        session = factory()
        setattr(g, name, session)
    return session


def _close_session(_exc: BaseException | None) -> None:
    for name in ("db_session", "db_read_session"):
        resource: Session | None = g.pop(name, None)
        if resource is not None:
            resource.close()
