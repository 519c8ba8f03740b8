"""The one hand-written Celery wire message: a ``run_job`` task as kombu's Redis transport writes it.

A submit sends its job id with one LPUSH of this message instead of Celery's
``send_task``, which builds the same message through kombu's producer, headers
and routing on every call: half a millisecond of a submit's CPU. The message is
Celery's task protocol 2 as kombu writes it to a Redis list (JSON, the body
base64-encoded), to the default exchange with the queue's name as routing key,
priority 0, so the key is the queue's own. Only the job id and a task id change
between messages.

This module depends on Celery's and kombu's message format: after an upgrade of
either, ``tests/service/test_celery_wire.py`` (this message against what
``send_task`` writes, field by field) says whether it still holds, and
``tests/service/test_worker_e2e.py`` has real workers consume it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.celery_app import BROKER_CONNECT_TIMEOUT_SECONDS, JOBS_QUEUE, RUN_JOB_TASK
from shared.redis_conn import redis_client
from shared.settings import Settings


class JobPublisher:
    """Sends ``run_job`` messages the way kombu's Redis transport does: one LPUSH each.

    The worker end-to-end tests consume these.
    """

    def __init__(self, settings: Settings) -> None:
        self._queue_key = settings.redis_prefix + JOBS_QUEUE
        self._redis = redis_client(
            settings,
            timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
            # One more try at once on a dropped pooled connection (a Redis restart, a
            # failover: the new connection asks the sentinels for the master), like
            # PUBLISH_RETRY_POLICY. A message sent twice is harmless: the second claim
            # is a no-op.
            retry=Retry(NoBackoff(), 1),
        )

    def publish(self, job_id: uuid.UUID) -> None:
        """Send a job id to the workers (after its row is committed)."""
        self._redis.lpush(self._queue_key, run_job_message(job_id))

    def close(self) -> None:
        self._redis.close()


_HOSTNAME = socket.gethostname()
# Celery's "embed" part of the body: no callbacks, chain or chord.
_NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def run_job_message(job_id: uuid.UUID, task_id: str | None = None) -> str:
    """The Redis list entry for one ``run_job(job_id)`` task, as ``send_task`` writes it."""
    task_id = task_id or str(uuid.uuid4())
    args = [str(job_id)]
    body = json.dumps([args, {}, _NO_WORKFLOW])
    headers: dict[str, Any] = {
        "lang": "py",
        "task": RUN_JOB_TASK,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{_HOSTNAME}",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,  # persistent
        "delivery_info": {"exchange": "", "routing_key": JOBS_QUEUE},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    )
