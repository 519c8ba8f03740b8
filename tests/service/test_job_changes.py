"""The change hints of ``shared.job_changes``: published on the job's channel under the
prefix, and never an error for the writer when Redis is away."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis
from processes import free_port

from client.events import read_events
from shared import job_changes
from shared.job_changes import ChangePublisher, channel, job_of_channel
from shared.settings import Settings


def test_a_hint_arrives_on_the_jobs_channel(redis_url: str, redis_prefix: str) -> None:
    prefix = f"{redis_prefix}hints:"
    settings = Settings.from_env(
        {"STYLEQUEUE_REDIS_URL": redis_url, "STYLEQUEUE_REDIS_PREFIX": prefix}
    )
    job_id = uuid.uuid4()
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(job_changes.channel_pattern(prefix))
    try:
        assert listener.get_message(timeout=1.0) is None  # the subscription's own answer
        ChangePublisher(settings).publish(job_id)
        deadline = time.monotonic() + 5.0
        message = None
        while message is None and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
        assert message is not None, "no hint came"
        assert message["channel"].decode() == channel(prefix, job_id)
        assert job_of_channel(prefix, message["channel"].decode()) == job_id
    finally:
        listener.close()
    assert job_of_channel(prefix, f"{prefix}job-changed:not-a-uuid") is None
    assert job_of_channel("other:", channel(prefix, job_id)) is None


def test_a_publish_to_a_redis_that_is_down_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    settings = Settings.from_env({"STYLEQUEUE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    publisher = ChangePublisher(settings)
    with caplog.at_level(logging.WARNING, logger="shared.job_changes"):
        started = time.monotonic()
        publisher.publish(uuid.uuid4())
        publisher.publish(uuid.uuid4())
        took = time.monotonic() - started
    assert took < 2.0, took
    warnings = [r for r in caplog.records if "could not publish" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not once a write


def test_the_clients_parser_reads_events_and_skips_comments() -> None:
    lines = [": ping", "", "id: 7", "event: progress", 'data: {"iteration": 3}', "",
             "event: done", "data: {", 'data: "status": "succeeded"}', ""]  # fmt: skip
    events = list(read_events(lines))
    assert [(e.name, e.id) for e in events] == [("progress", "7"), ("done", "7")]
    assert events[0].data == {"iteration": 3} and events[1].data == {"status": "succeeded"}
