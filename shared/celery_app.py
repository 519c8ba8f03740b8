"""The Celery app: Redis as the broker, carrying job ids only; the database is the truth.

The API sends tasks by name so it never imports the worker (or torch): on a
submit with ``shared.celery_wire.JobPublisher`` (one LPUSH of a Celery message), elsewhere with
``send_task``. The settings below meet Celery's pitfalls for long jobs head on.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import warnings
from typing import Any

import redis
from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup

from shared.redis_conn import is_sentinel_url, redis_client, sentinel_transport_options
from shared.settings import Settings

RUN_JOB_TASK = "stylequeue.run_job"
RECONCILE_TASK = "stylequeue.reconcile"
JOBS_QUEUE = "stylequeue.jobs"  # the GPU workers
MAINTENANCE_QUEUE = "stylequeue.maintenance"  # the scheduler's own worker
# A new pool process loads VGG19 before it reports for work (worker_process_init):
# seconds on a busy CPU, longer with CUDA's start on a cold GPU. Celery's default
# (4 s) kills one that is slower with SIGKILL and starts another, over and over,
# and a restart after a crash must not fall into that.
POOL_PROCESS_START_SECONDS = 300.0

# A second delivery is harmless (the claim makes it a no-op), but an early one
# would start a retry while the first run is still healthy: make it rare.
VISIBILITY_TIMEOUT_SECONDS = 24 * 3600
BROKER_CONNECT_TIMEOUT_SECONDS = 2.0  # a submit must not hang on a dead Redis
# Any one Redis command of a worker or the scheduler (a publish, an ack): a
# connection that died without a word (failover, NAT, firewall) fails after this
# instead of hanging the reconciler for good. Above kombu's 1 s BRPOP timeout.
BROKER_SOCKET_TIMEOUT_SECONDS = 30.0
# kombu's own checks of the long-lived BRPOP and pub/sub connections (its default).
BROKER_HEALTH_CHECK_SECONDS = 25
# The reconciler's marker key (under the prefix): see ``broker_lost_its_keys``.
BROKER_MARKER_KEY = "stylequeue.reconciler-marker"
_HOSTNAME = socket.gethostname()
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``; tasks register themselves on it (``shared_task``)."""
    app = Celery("stylequeue", broker=settings.redis_url, set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        # A job that failed is a task that raised (worker.tasks.JobFailedError, so that
        # Flower shows FAILURE): its message is acknowledged like any other outcome's,
        # never requeued. Celery's default, set here because the queue relies on it.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_proc_alive_timeout=POOL_PROCESS_START_SECONDS,
        task_default_queue=JOBS_QUEUE,
        task_routes={
            RUN_JOB_TASK: {"queue": JOBS_QUEUE},
            RECONCILE_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        broker_transport_options=broker_transport_options(settings),
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=True,
        # A Redis restart or outage: reconnect for as long as it takes. Celery's
        # default gives up after 100 tries (about 46 minutes at its 30 s ceiling) and
        # the worker or the scheduler exits ("Unrecoverable error").
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # A running job goes on through a lost broker connection: the database lease,
        # not the broker's ack, says who runs it, and the message's redelivery is a
        # no-op. Cancelling it (Celery 6's announced default) would throw work away.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        # `stylequeue worker` turns task events on (--task-events) unless --no-events;
        # Flower also turns them on remotely every few seconds.
        worker_send_task_events=False,
        beat_schedule={
            "reconcile": {"task": RECONCILE_TASK, "schedule": settings.reconcile_seconds},
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        timezone="UTC",
    )
    app.conf["stylequeue_settings"] = settings
    return app


@celeryd_after_setup.connect
def _no_reminder_of_a_chosen_setting(**_: Any) -> None:
    """worker_cancel_long_running_tasks_on_connection_loss is chosen above: Celery's
    reminder of it, many lines at every reconnect, is noise. After Celery's logging
    setup, which turns its own deprecation warnings on ("always")."""
    warnings.filterwarnings(
        "ignore",
        message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss",
        category=CPendingDeprecationWarning,
    )


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    # A sentinel:// URL (Kombu's SentinelChannel) takes every option below as well,
    # plus the master's name and the sentinels' own socket options.
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        # Every key we and Celery put in Redis starts with this, so deployments
        # (and test runs) sharing one Redis never see each other's messages.
        "global_keyprefix": settings.redis_prefix,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,  # the kernel notices a dead peer on an idle connection
        "health_check_interval": BROKER_HEALTH_CHECK_SECONDS,
        **sentinel_transport_options(settings, timeout=BROKER_CONNECT_TIMEOUT_SECONDS),
    }


def broker_lost_its_keys(settings: Settings) -> bool:
    """Set the reconciler's marker key in Redis; True when it was not there, or, with
    Sentinel, when the master is another Redis than at the last run.

    The key never expires, so it goes only when Redis loses its data: a restart
    without persistence, a FLUSHALL or FLUSHDB, an eviction (``noeviction`` rules
    that out), or the Redis is new to this deployment. Each may have taken every
    queued job's message with it, so the reconciler then re-sends every queued job
    at once rather than STYLEQUEUE_REQUEUE_AFTER_SECONDS after its last change.

    Behind Sentinel the marker names the master's ``run_id`` too: after a failover
    the promoted replica has the marker (replicated) but may lack the messages the
    old master took just before it died (replication is asynchronous), so a marker
    written on another Redis process counts as lost keys, once, and is rewritten.
    """
    client = _short_lived_client(settings)
    key = settings.redis_prefix + BROKER_MARKER_KEY
    try:
        run_id = _master_run_id(client) if is_sentinel_url(settings.redis_url) else None
        marker = f"set by {_HOSTNAME}/{os.getpid()} at {time.time():.0f}"
        if run_id is not None:
            marker += f" {MARKER_RUN_ID_WORD} {run_id}"
        if client.set(key, marker, nx=True):
            return True
        if run_id is None:
            return False
        found = client.get(key)
        if found is not None and found.decode(errors="replace").endswith(f" {run_id}"):
            return False
        client.set(key, marker)  # written by the old master's run: this one's from now on
        return True
    finally:
        client.close()


MARKER_RUN_ID_WORD = "on redis run_id"


def _master_run_id(client: redis.Redis) -> str | None:
    """The ``run_id`` of the Redis process that answers (each process has its own, so a
    promoted replica's is not the old master's); None where INFO is refused."""
    try:
        run_id = client.info("server").get("run_id")
    except redis.ResponseError:
        return None
    return str(run_id) if run_id else None


def forget_broker_marker(settings: Settings) -> None:
    """Remove the marker again (the re-send after a loss did not finish: the next run redoes it)."""
    client = _short_lived_client(settings)
    try:
        client.delete(settings.redis_prefix + BROKER_MARKER_KEY)
    except redis.RedisError:
        pass  # Redis is gone again; it comes back without the marker, or with the jobs
    finally:
        client.close()


def _short_lived_client(settings: Settings) -> redis.Redis:
    return redis_client(settings, timeout=BROKER_CONNECT_TIMEOUT_SECONDS)


def enqueue_job(app: Celery, job_id: uuid.UUID) -> None:
    """Send a job id to the workers (after its row is committed)."""
    app.send_task(
        RUN_JOB_TASK,
        args=[str(job_id)],
        queue=JOBS_QUEUE,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def settings_of(app: Celery) -> Settings:
    """The settings an app was created with."""
    settings = app.conf.get("stylequeue_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not made by create_celery")
    return settings
