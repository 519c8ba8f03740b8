"""The submit's enqueue (one LPUSH) writes the message that Celery's own send_task writes.

That the real worker consumes it is proven end to end in test_worker_e2e.py
(every job there is submitted over HTTP, so through JobPublisher).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from shared.celery_app import JOBS_QUEUE, create_celery, enqueue_job
from shared.celery_wire import JobPublisher
from shared.settings import Settings

# What differs from one message to the next, or between two sending processes.
PER_MESSAGE_HEADERS = {"id", "root_id", "origin"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}


@pytest.fixture
def own_queue(settings: Settings) -> Iterator[tuple[Settings, redis.Redis]]:
    """Settings with a key prefix of this test's own, and a client that removes its keys after."""
    mine = replace(settings, redis_prefix=f"{settings.redis_prefix}enqueue-{uuid.uuid4().hex[:6]}:")
    client = redis.Redis.from_url(mine.redis_url)
    yield mine, client
    for key in client.scan_iter(match=f"{mine.redis_prefix}*"):
        client.delete(key)
    client.close()


def _pop(client: redis.Redis, key: str) -> dict[str, Any]:
    raw = client.rpop(key)
    assert raw is not None, f"nothing in {key}"
    message: dict[str, Any] = json.loads(raw)
    return message


def test_publisher_message_is_the_one_celery_sends(own_queue: tuple[Settings, redis.Redis]) -> None:
    settings, client = own_queue
    job_id = uuid.uuid4()
    key = settings.redis_prefix + JOBS_QUEUE
    enqueue_job(create_celery(settings), job_id)
    by_celery = _pop(client, key)
    publisher = JobPublisher(settings)
    publisher.publish(job_id)
    publisher.close()
    ours = _pop(client, key)
    assert client.llen(key) == 0

    assert ours.keys() == by_celery.keys()
    assert base64.b64decode(ours["body"]) == base64.b64decode(by_celery["body"])
    assert json.loads(base64.b64decode(ours["body"]))[0] == [str(job_id)]
    for part, varying in (("headers", PER_MESSAGE_HEADERS), ("properties", PER_MESSAGE_PROPERTIES)):
        assert ours[part].keys() == by_celery[part].keys()
        assert {k: v for k, v in ours[part].items() if k not in varying} == {
            k: v for k, v in by_celery[part].items() if k not in varying
        }
    assert (
        ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    )
    assert {k: v for k, v in ours.items() if k not in ("headers", "properties", "body")} == {
        k: v for k, v in by_celery.items() if k not in ("headers", "properties", "body")
    }


def test_publisher_raises_when_redis_is_down(settings: Settings) -> None:
    # create_job turns this into an enqueue_failed event and a job left queued.
    publisher = JobPublisher(replace(settings, redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(redis.ConnectionError):
        publisher.publish(uuid.uuid4())
    publisher.close()
