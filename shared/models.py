"""The database schema as SQLAlchemy 2.0 typed models. Changed only through a migration.

The tables: ``api_clients`` (who may call the API), ``jobs`` (one row per
style transfer, the source of truth for its state), ``job_events`` (the
append-only history of each job, for operators and fault analysis),
``job_losses`` (each attempt's loss curve, for operators), ``workers`` (each
worker process's registration and heartbeat, for operators) and
``admin_sessions`` (the /admin logins).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Names for constraints and indexes, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUS_LENGTH = 16
NAME_LENGTH = 200
IDEMPOTENCY_KEY_LENGTH = 200
ERROR_CODE_LENGTH = 64
WORKER_LENGTH = 255
EVENT_KIND_LENGTH = 32
KEY_HASH_LENGTH = 64  # sha256 hex
FILE_NAME_LENGTH = 64  # a job file's name in storage, e.g. result.a2.png
DIGEST_LENGTH = 64  # sha256 hex
WEBHOOK_SECRET_LENGTH = 80
BATCH_SHAPE_LENGTH = 32  # a job's output shape, "WxH"


class JobStatus(enum.StrEnum):
    """Where a job is in its life; ``TRANSITIONS`` (below) is how it moves:

                      claim                          finish
        submit ─▶ queued ─────────▶ running ─────────────────────▶ succeeded
                   ▲ │ ▲   release    │  │ fail
                   │ │ └──────────────┘  ├─────────────────────────▶ failed ───┐
                   │ │                   │ cancel (once requested)            │
                   │ │                   └─────────────────────────▶ canceled ─┤
                   │ ├── cancel ───────────────────────────────────▶ canceled  │
                   │ └── give up (its workers died too often) ─────▶ failed    │
                   └──────────────────────── retry ───────────────────────────┘

    A claim and a give-up also take a running job whose lease ran out (its
    worker died or was cut off). Running, a job's worker renews its lease and
    may learn that a cancel was requested; neither changes the status.

    A follower (``jobs.follows``: an identical job's run it shares, ``shared.follows``)
    is never claimed: its status follows its leader's between queued and running, with
    no event; it ends with its leader (follower finish / fail), alone when canceled
    running (cancel follower), or becomes a leader itself (promote: queued).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class EventKind(enum.StrEnum):
    """The kinds of ``job_events`` rows: each transition's, and what else happens to a job."""

    CREATED = "created"
    ENQUEUE_FAILED = "enqueue_failed"
    REQUEUED = "requeued"
    CLAIMED = "claimed"
    CHECKPOINT = "checkpoint"
    RESUMED = "resumed"
    CANCEL_REQUESTED = "cancel_requested"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    FILES_DELETED = "files_deleted"
    RELEASED = "released"
    WORKER_LOST = "worker_lost"
    RETRIED = "retried"  # an admin queued a failed or canceled job again
    FOLLOWING = "following"  # it shares the run of an identical job (shared.follows)
    FOLLOWED_BY = "followed_by"  # an identical job shares its run
    PROMOTED = "promoted"  # its leader was canceled: it runs the computation itself now


class Transition(NamedTuple):
    """One move of the state machine: a job in one of ``sources`` becomes ``target``, and
    an ``event`` row records it (``shared.jobs`` makes each with one guarded UPDATE)."""

    sources: tuple[JobStatus, ...]
    target: JobStatus
    event: EventKind


class Transitions(NamedTuple):
    """Every transition there is, by the name of what makes it."""

    claim: Transition  # a worker takes the job (a running one only once its lease ran out)
    release: Transition  # the worker hands it back (shutdown, storage failure); attempt kept
    finish: Transition
    fail: Transition
    cancel_running: Transition  # the worker stopped for a cancel request
    cancel_queued: Transition
    give_up: Transition  # its workers died too often (a running one only once its lease ran out)
    retry: Transition  # an admin queues it again
    follower_finish: Transition  # its leader succeeded: a copy of the result
    follower_fail: Transition  # its leader failed: the same error
    cancel_follower: Transition  # a follower canceled while its leader runs
    promote: Transition  # its leader was canceled: a follower queued to run it


_Q, _R = JobStatus.QUEUED, JobStatus.RUNNING
TRANSITIONS = Transitions(
    claim=Transition((_Q, _R), _R, EventKind.CLAIMED),
    release=Transition((_R,), _Q, EventKind.RELEASED),
    finish=Transition((_R,), JobStatus.SUCCEEDED, EventKind.SUCCEEDED),
    fail=Transition((_R,), JobStatus.FAILED, EventKind.FAILED),
    cancel_running=Transition((_R,), JobStatus.CANCELED, EventKind.CANCELED),
    cancel_queued=Transition((_Q,), JobStatus.CANCELED, EventKind.CANCELED),
    give_up=Transition((_Q, _R), JobStatus.FAILED, EventKind.FAILED),
    retry=Transition((JobStatus.FAILED, JobStatus.CANCELED), _Q, EventKind.RETRIED),
    follower_finish=Transition((_Q, _R), JobStatus.SUCCEEDED, EventKind.SUCCEEDED),
    follower_fail=Transition((_Q, _R), JobStatus.FAILED, EventKind.FAILED),
    cancel_follower=Transition((_Q, _R), JobStatus.CANCELED, EventKind.CANCELED),
    promote=Transition((_Q, _R), _Q, EventKind.PROMOTED),
)
RETRYABLE_STATUSES = TRANSITIONS.retry.sources


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is
    stored as naive UTC (which still sorts and compares correctly) and read back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiClient(Base):
    """A caller of the API. Only the sha256 of its key is stored."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    key_hash: Mapped[str] = mapped_column(String(KEY_HASH_LENGTH), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Its limits (shared.client_limits): None is the service's default, 0 no limit.
    rate_limit: Mapped[float | None] = mapped_column(Float)  # submits per second, sustained
    rate_burst: Mapped[int | None] = mapped_column(Integer)  # submits at once
    max_queued: Mapped[int | None] = mapped_column(Integer)
    max_running: Mapped[int | None] = mapped_column(Integer)
    # Its share of the workers when they are scarce (shared.fair_share).
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    # The virtual start time of its latest started job in the fair order (None: none yet).
    fair_tag: Mapped[float | None] = mapped_column(Float)
    # Signs its webhooks (shared.webhooks): "whsec_" + base64; None until made (rotate).
    webhook_secret: Mapped[str | None] = mapped_column(String(WEBHOOK_SECRET_LENGTH))


class Job(Base):
    """One style transfer: its inputs' parameters, its state, its progress and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("client_id", "idempotency_key"),
        # A client's jobs newest first, keyset-paginated (and the admin history).
        Index("ix_jobs_client_created", "client_id", "created_at", "id"),
        # The reconciler and the admin list by status (keyset: created_at, id).
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        # The admin list: every job, and a worker's jobs, newest first.
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_worker_created", "worker", "created_at", "id"),
        # The admin statistics: jobs finished in a window.
        Index("ix_jobs_finished", "finished_at"),
        # The result cache's lookup (shared.result_cache): a key's succeeded jobs, newest
        # first, read in index order and stopped after a few (however many repeats it has).
        Index("ix_jobs_cache_key", "cache_key", "status", "created_at"),
        # A client's queued and running jobs, counted against its limits.
        Index("ix_jobs_client_status", "client_id", "status"),
        # A leader's followers (shared.follows), found at each change of its progress.
        Index("ix_jobs_follows", "follows"),
        # A client's next job in its own order (shared.fair_share): priority, then age.
        Index(
            "ix_jobs_client_fair",
            "client_id",
            "status",
            "queue_name",
            "priority",
            "created_at",
            "id",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            native_enum=False,
            length=STATUS_LENGTH,
            values_callable=lambda statuses: [s.value for s in statuses],
            validate_strings=True,
        ),
        default=JobStatus.QUEUED,
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    n_styles: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(IDEMPOTENCY_KEY_LENGTH))
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    iterations: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    lease_owner: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The committed files: each written by one attempt under a name of its own; only
    # the file a row names is served or resumed from (None: there is none yet).
    result_file: Mapped[str | None] = mapped_column(String(FILE_NAME_LENGTH))
    checkpoint_file: Mapped[str | None] = mapped_column(String(FILE_NAME_LENGTH))
    preview_file: Mapped[str | None] = mapped_column(String(FILE_NAME_LENGTH))
    # sha256 of the submit's inputs and parameters: an Idempotency-Key replay must match it.
    request_digest: Mapped[str | None] = mapped_column(String(DIGEST_LENGTH))
    # The result cache (shared.result_cache): sha256 of the inputs, the parameters, the
    # engine's version and the weights (None: rows from before it); whether the result was
    # copied from an earlier job with this key (``cached_from``) instead of computed.
    cache_key: Mapped[str | None] = mapped_column(String(DIGEST_LENGTH))
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    cached_from: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Canceled (deadline_exceeded) if not finished by then: the submit's Cancel-After.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its estimated peak device memory, in bytes (shared.memory_estimate): a worker claims
    # it only if it fits the worker's budget. None (rows from before): fits any worker.
    memory_estimate: Mapped[int | None] = mapped_column(BigInteger)
    # What the inputs may do badly, found at submit (shared.input_warnings): a list of
    # {"code", "message"}; empty for a job without any (and for rows from before).
    warnings: Mapped[list[dict[str, str]]] = mapped_column(
        JSONType, default=list, server_default="[]"
    )
    # In-flight sharing (shared.follows): the identical job whose run this one shares
    # (its leader); None for a job that runs its own (and once promoted).
    follows: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The submit's priority (-10..10): orders the client's own queued jobs, higher first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The broker key space its message went to (STYLEQUEUE_REDIS_PREFIX): a worker picks
    # the next job among those of its own (shared.fair_share); "" for rows from before.
    queue_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # Its output's "WxH" (shared.sizes.batch_shape): a worker runs together only jobs of
    # one shape (worker.batch_runner). None for rows from before: never batched.
    batch_shape: Mapped[str | None] = mapped_column(String(BATCH_SHAPE_LENGTH))


class JobEvent(Base):
    """Something that happened to a job (created, claimed, progress, succeeded, …)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_at", "job_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(EVENT_KIND_LENGTH))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class JobLosses(Base):
    """One attempt's loss curve, downsampled by its worker to at most a few hundred points.

    ``points``: ``[iteration, loss, content_loss, style_loss, tv_loss]`` lists, by
    iteration. Written by the attempt's worker as it runs; read by /admin.
    """

    __tablename__ = "job_losses"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    points: Mapped[list[list[float]]] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


DEVICE_LENGTH = 32


class Worker(Base):
    """A worker process: registered once its network is loaded, beating while it lives.

    Rows of dead workers stay (history); a worker is alive while its
    ``last_heartbeat_at`` is recent (``shared.workers.ALIVE_SECONDS``).
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(WORKER_LENGTH), primary_key=True)  # hostname/pid
    hostname: Mapped[str] = mapped_column(String(WORKER_LENGTH))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(DEVICE_LENGTH))
    device_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # What this process holds on its GPU as of its last beat; None on the CPU.
    device_memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The most a job's memory estimate may be for this worker to claim it
    # (shared.memory_estimate.worker_budget_bytes); None: it claims any job.
    memory_budget_bytes: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    current_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    jobs_failed: Mapped[int] = mapped_column(Integer, default=0)


class AdminSession(Base):
    """A logged-in /admin session: the cookie carries its random token, the row its sha256.

    Logging out deletes the row, so a copy of the cookie made before is no login after;
    a row past ``expires_at`` is no login either (and is deleted at the next login).
    """

    __tablename__ = "admin_sessions"
    __table_args__ = (Index("ix_admin_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(KEY_HASH_LENGTH), primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobWebhook(Base):
    """Where a job's webhooks go and which events it asked for (``shared.webhooks``).

    ``events``: comma-separated, of ``start``, ``progress``, ``completed``.
    ``progress_at``: when its last ``progress`` delivery was written (one per 2 s at most).
    """

    __tablename__ = "job_webhooks"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[str] = mapped_column(String(64))
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One webhook to deliver (the outbox) and how its attempts went (the log).

    Written in the transaction of the job change that causes it; ``state`` is
    ``pending`` (``next_attempt_at``: when it is due), ``delivered`` or ``failed``
    (given up). A sender holds it while ``claimed_until`` is ahead; ``body`` is the
    job JSON as first sent, resent as is; ``attempt_log``: one
    ``{"at", "status_code", "error", "seconds"}`` per attempt.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(WORKER_LENGTH))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    body: Mapped[str | None] = mapped_column(Text)
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
