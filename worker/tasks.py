"""The Celery tasks. They take ids, re-read the database, and hand over to ``worker.runner``."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import time
import uuid
from types import FrameType
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task, current_app, shared_task
from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_process_init,
    worker_shutting_down,
)
from celery.worker.request import Request

from shared import client_limits, fair_share, follows, leases, reconciler
from shared.celery_app import (
    RECONCILE_TASK,
    RUN_JOB_TASK,
    broker_lost_its_keys,
    enqueue_job,
    forget_broker_marker,
    settings_of,
)
from shared.deadlines import DEADLINE_EXCEEDED
from shared.errors import StorageError
from shared.job_changes import publish_changes_to
from shared.logging import configure_logging, job_event
from shared.models import EventKind, utcnow
from shared.storage import CONTENT_FILE
from worker.attempts import log_too_many_attempts
from worker.memory_pass_on import pass_on_too_big
from worker.webhook_sender import start_sender

if TYPE_CHECKING:
    from celery import Celery

    from worker.context import WorkerContext

log = logging.getLogger(__name__)

_context: WorkerContext | None = None  # this process's, built after the fork
_running_job = False  # whether this pool child is inside run_job now
# Whether this process's last job was handed back because the storage failed: until the
# storage answers again it claims nothing (``_storage_answers``) and passes each job on.
_storage_failed = False
# After passing a job on, this long before taking the next message: another idle worker,
# waiting for one, gets the job meanwhile.
STORAGE_PASS_ON_SECONDS = 1.0
# The worker's Celery node name (``--hostname``, %h expanded), as the main process
# learns it before it forks the pool: a pool process inherits it.
_node_name: str | None = None


def _worker_context(settings_app: Celery, node_name: str | None = None) -> WorkerContext:
    # torch is imported here, not at module import: the scheduler's worker and
    # the prefork parent never load it, and CUDA is only touched after the fork.
    from worker.context import make_context

    global _context
    if _context is None:
        settings = settings_of(settings_app)
        _context = make_context(settings, node_name or _node_name)
        # A follower promoted when its leader is canceled here is sent from here.
        _context.enqueue = functools.partial(enqueue_job, settings_app)
        # The API's event streams hear of this process's changes of its jobs' rows.
        publish_changes_to(settings)
        # Its webhook sender delivers the outbox beside the jobs (worker.webhook_sender).
        start_sender(_context.db, _context.name)
    return _context


@celeryd_init.connect
def configure_logging_first(
    sender: str | None = None, options: dict[str, Any] | None = None, **_: Any
) -> None:
    """Our log format before the worker's first line (its warning when run as root comes
    next); and the node name, for the pool processes this main process forks."""
    global _node_name
    configure_logging(fallback_level=(options or {}).get("loglevel"))
    if isinstance(sender, str) and sender:
        _node_name = sender


@setup_logging.connect
def use_stylequeue_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery's lines and ours in one format: text, or JSON with STYLEQUEUE_LOG_FORMAT=json.

    Connected, this signal also keeps Celery from installing handlers of its own.
    """
    configure_logging(fallback_level=loglevel)


@worker_process_init.connect
def load_model_after_fork(sender: str | None = None, **_: Any) -> None:
    """Load the network once per worker process, in the child, before its first job.

    ``sender`` is the worker's node name (Celery's prefork pool sends it; the
    name recorded at ``celeryd_init`` otherwise): the process registers and
    claims under it. Celery's solo pool sends this signal too, in the main
    process: that is the scheduler's own worker (``stylequeue scheduler``), which
    runs no job and must neither load the network nor register as a job worker.
    """
    from billiard.process import current_process

    if current_process().name == "MainProcess":
        return
    _worker_context(current_app, sender if isinstance(sender, str) and sender else None).network()


_sigterm_before: Any = None  # the pool child's own SIGTERM handler (billiard's), once replaced


def _handle_sigterm_in_child() -> None:
    """Make SIGTERM hand the running job back rather than end the child mid-job.

    billiard installs its SIGTERM handler (exit at once, the work since the last
    checkpoint lost and the job left running until its lease expires) after
    ``worker_process_init``, so ours goes in from the task, once per child.
    """
    global _sigterm_before
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm_in_child:
        _sigterm_before = current
        signal.signal(signal.SIGTERM, _on_sigterm_in_child)


def _on_sigterm_in_child(signum: int, frame: FrameType | None) -> None:
    if _running_job and _context is not None:
        _context.shutting_down.set()  # the engine stops at its next iteration
        return
    # Nothing to hand back: let the child go as Celery and billiard would.
    before = _sigterm_before
    signal.signal(signum, before if callable(before) else signal.SIG_DFL)
    if callable(before):
        before(signum, frame)
    else:
        os.kill(os.getpid(), signum)


POOL_PROCESS_NAME = "PoolWorker"  # billiard names them ForkPoolWorker-N


@worker_shutting_down.connect
def hand_back_running_jobs(how: str | None = None, **_: Any) -> None:
    """In the worker's main process, on a warm shutdown (SIGTERM to it alone, as
    ``docker stop`` sends): without this, Celery would wait for a job of hours.

    The pool children get SIGTERM, which makes a running job checkpoint and go
    back to the queue (``_on_sigterm_in_child``); the shutdown then waits only
    for that. A cold shutdown stops the children anyway.
    """
    if how != "Warm":
        return
    from billiard.process import active_children

    for child in active_children():
        # Pool processes only: the scheduler's worker has none, and its one child, the
        # embedded celery beat, runs no job (Celery stops it with the worker).
        if child.pid is not None and POOL_PROCESS_NAME in (child.name or ""):
            log.info("asking pool process %d to hand its job back", child.pid)
            os.kill(child.pid, signal.SIGTERM)


class JobRequest(Request):
    """A ``run_job`` message in the worker's main process.

    When the pool process running the job dies (SIGKILL, the OOM killer), the
    main process reaps it, starts another and fails the request with
    WorkerLostError (about a second later here; ``worker_lost_wait``, 10 s, at
    most); Celery then puts the message back (``task_reject_on_worker_lost``)
    for the restarted pool process. Without
    more, that claim would find the job under the dead process's lease and skip
    it, leaving it to the reconciler once the lease runs out (up to
    STYLEQUEUE_LEASE_SECONDS + STYLEQUEUE_RECONCILE_SECONDS). The process is
    known dead, so its lease ends here first: the requeued message retries the
    job at once. At most one run still holds: nobody else was running it.
    """

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError) and self.worker_pid:
            _end_lease_of_dead_process(self.task.app, self.args, self.hostname, self.worker_pid)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def _end_lease_of_dead_process(app: Celery, args: Any, worker: str, pid: int) -> None:
    """End the leases of pool process ``pid`` of this worker (node name ``worker``): the
    attempts whose claims that process recorded (several for a batch), and no other. The
    jobs other than the message's (which Celery sends again) are sent again here."""
    from shared.db import Database

    try:
        job_id = uuid.UUID(str(args[0]))
    except (ValueError, TypeError, IndexError):
        return
    hostname = socket.gethostname()
    ended: list[tuple[uuid.UUID, int]] = []
    try:
        # A short-lived connection: the main process forks the next pool process
        # and must not hand it open database sockets.
        db = Database(settings_of(app).database_url)
        try:
            with db.session() as session:
                # The message's job, and (the fair order chose others, or a batch) the
                # jobs this worker holds.
                held = dict.fromkeys([job_id, *fair_share.jobs_leased_by(session, worker)])
                for candidate in held:
                    attempt = leases.expire_lease_of_dead_worker(
                        session, candidate, worker=worker, pid=pid, hostname=hostname
                    )
                    if attempt is not None:
                        ended.append((candidate, attempt))
        finally:
            db.dispose()
    except Exception:  # the reconciler recovers the job once the lease runs out
        log.warning(
            "job %s: could not end the lease of %s's dead pool process %d",
            job_id,
            worker,
            pid,
            exc_info=True,
        )
    for held_id, attempt in ended:
        log.warning(
            "job %s: pool process %d of %s died mid-job; its lease ended for a retry",
            held_id,
            pid,
            worker,
            extra=job_event(
                EventKind.WORKER_LOST, held_id, worker=worker, attempt=attempt, pool_pid=pid
            ),
        )
        if held_id != job_id:
            try:
                enqueue_job(app, held_id)
            except Exception:  # the reconciler re-sends it
                log.warning("job %s: could not send it again", held_id, exc_info=True)


class JobFailedError(Exception):
    """What ``run_job`` raises once a job's failure is committed: Celery, and Flower, then
    record the task as FAILURE, as the job is.

    The message is acknowledged as for every other outcome (acks_late with
    ``task_acks_on_failure_or_timeout``, in ``shared.celery_app``): never
    requeued, never retried by Celery. The job's outcome is in the database; this
    is only how the task reports it. Every other outcome returns its name
    (SUCCESS): succeeded, canceled (nobody revoked the task), and the deliveries
    that decided nothing about the job (skipped, lease_lost, released, deferred).
    """


def _failure(ctx: WorkerContext, job_id: uuid.UUID) -> JobFailedError:
    """The exception for job ``job_id``'s failure, naming its error when it can be read."""
    from sqlalchemy import select

    from shared.models import Job

    try:
        with ctx.db.session() as session:
            row = session.execute(
                select(Job.error_code, Job.error_message).where(Job.id == job_id)
            ).one_or_none()
    except Exception:  # only the exception's text depends on it
        row = None
    if row is None or row[0] is None:
        return JobFailedError(f"job {job_id} failed")
    return JobFailedError(f"job {job_id} failed: {row[0]}: {row[1]}")


@shared_task(
    bind=True,
    name=RUN_JOB_TASK,
    ignore_result=True,
    Request=JobRequest,
    throws=(JobFailedError,),  # logged by Celery as expected, at INFO, without a traceback
)
def run_job(self: Task, job_id: str) -> str:
    """Run the job with this id (claimed first: a duplicate message is a no-op).

    Returns the outcome of the first job claimed (with STYLEQUEUE_BATCH_MAX over 1,
    others may run with it, each ending on its own); raises JobFailedError when that
    job failed.
    """
    from worker.runner import Outcome, run_delivery

    try:
        parsed = uuid.UUID(job_id)
    except (ValueError, TypeError):
        log.error("dropping a message with a malformed job id: %r", job_id)
        return "malformed"

    global _running_job, _storage_failed
    _handle_sigterm_in_child()
    ctx = _worker_context(self.app, self.request.hostname)
    _check_node_name(ctx, self.request.hostname)
    if _storage_failed and not _storage_answers(ctx, parsed):
        # A worker cut off from the store would claim the job, fail at its start and hand
        # it back, again and again, while a healthy worker sat idle: pass it on instead.
        enqueue_job(self.app, parsed)
        time.sleep(STORAGE_PASS_ON_SECONDS)
        return "storage_unavailable"
    _running_job = True
    try:
        # The job the fair order chose (not always the message's), and any run with it.
        ended = run_delivery(ctx, parsed)
    finally:
        _running_job = False
    if any(outcome is not Outcome.SKIPPED for _, outcome in ended):
        _storage_failed = any(outcome is Outcome.DEFERRED for _, outcome in ended)
    for done, outcome in ended:
        if outcome is not Outcome.SKIPPED:
            # One of its client's jobs ended or was handed back: a slot may be free.
            _offer_waiting_jobs(self.app, ctx, done)
        else:  # nothing this worker fits: a job too big for it goes to one it fits
            pass_on_too_big(self.app, ctx)
        if outcome is Outcome.RELEASED:
            # This worker consumes no more; another one (or this one restarted) takes it.
            # Should the broker be gone too, the reconciler re-enqueues the queued job.
            enqueue_job(self.app, done)
    first, outcome = ended[0]
    if outcome is Outcome.FAILED:
        raise _failure(ctx, first)  # the failure is committed: FAILURE in Celery too
    return str(outcome)


def _storage_answers(ctx: WorkerContext, job_id: uuid.UUID) -> bool:
    """Whether the storage answers this process now (a look for the job's content file)."""
    try:
        ctx.storage.exists(job_id, CONTENT_FILE)
    except StorageError as exc:
        log.warning(
            "job %s: not claimed, the storage still fails here (%s); passed on to another worker",
            job_id,
            exc.code,
            extra=job_event("storage_pass_on", job_id, error_code=exc.code),
        )
        return False
    log.info("the storage answers again: this worker claims jobs again")
    return True


def _offer_waiting_jobs(app: Celery, ctx: WorkerContext, job_id: uuid.UUID) -> None:
    """Send again the queued jobs of this job's client that a claim may have left for want
    of a running slot (best effort: the reconciler re-sends them later anyway)."""
    try:
        with ctx.db.session() as session:
            offered = client_limits.jobs_to_offer(
                session, job_id, default_max_running=ctx.settings.max_running, now=utcnow()
            )
        for waiting in offered:
            enqueue_job(app, waiting)
    except Exception:
        log.warning("could not offer the waiting jobs of job %s's client", job_id, exc_info=True)


_name_checked = False


def _check_node_name(ctx: WorkerContext, delivered_to: str | None) -> None:
    """Once: a warning if the node the message was delivered to is not the name this
    process claims under (it learnt its name before the fork; they always agree)."""
    global _name_checked
    if _name_checked or not delivered_to:
        return
    _name_checked = True
    if delivered_to != ctx.name:
        log.warning(
            "this pool process claims jobs as %s, but its Celery node is %s",
            ctx.name,
            delivered_to,
        )


@shared_task(bind=True, name=RECONCILE_TASK, ignore_result=True)
def reconcile(self: Task) -> int:
    """Fail the jobs whose workers died STYLEQUEUE_MAX_ATTEMPTS times; re-enqueue queued
    jobs the broker lost and running jobs whose worker died; remove the files of jobs
    finished longer ago than the retention period."""
    from shared.db import Database
    from shared.storage import open_storage

    settings = settings_of(self.app)
    db = Database(settings.database_url)
    storage = open_storage(settings)
    # Redis restarted empty or was flushed: every queued job's message may be gone.
    keys_lost = broker_lost_its_keys(settings)
    try:
        with db.session() as session:
            # First the jobs whose workers died too often: failed, not sent again.
            exhausted = reconciler.fail_exhausted_jobs(
                session, storage, max_attempts=settings.max_attempts
            )
            past_deadline = reconciler.cancel_jobs_past_deadline(session, storage)
            # Followers whose leader ended without settling them (a crash in between).
            for promoted in follows.settle_orphaned_followers(session, storage):
                enqueue_job(self.app, promoted)
            requeued = reconciler.requeue_stale_jobs(
                session,
                older_than_seconds=0 if keys_lost else settings.requeue_after_seconds,
                enqueue=lambda job_id: enqueue_job(self.app, job_id),
                limit=None if keys_lost else 1000,
            )
            expired: list[uuid.UUID] = []
            if settings.retention_seconds > 0:
                expired = reconciler.delete_expired_files(
                    session, storage, older_than_seconds=settings.retention_seconds
                )
    except BaseException:
        if keys_lost:
            forget_broker_marker(settings)  # not every job re-sent: the next run does it again
        raise
    finally:
        db.dispose()
    if keys_lost:
        log.warning(
            "Redis lost its keys (a restart without persistence, a flush), is new, or failed over: "
            "every queued job re-sent (%d)",
            len(requeued),
        )
    for failure in exhausted:
        log_too_many_attempts(failure)
    for job_id in expired:
        log.info(
            "job %s: files removed after the retention period",
            job_id,
            extra=job_event(EventKind.FILES_DELETED, job_id),
        )
    for job_id in past_deadline:
        log.info(
            "job %s canceled: past its deadline",
            job_id,
            extra=job_event(EventKind.CANCELED, job_id, error_code=DEADLINE_EXCEEDED),
        )
    for job_id in requeued:
        log.info(
            "job %s re-enqueued by the reconciler",
            job_id,
            extra=job_event(EventKind.REQUEUED, job_id),
        )
    return len(requeued)
