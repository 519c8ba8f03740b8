"""The one place that makes Redis clients (shared/redis_conn.py): the URLs it takes, the
settings it needs, and, on a real primary, replica and three sentinels, that every client
of the product (the API's, the submit's publisher, the reconciler's marker, Celery's
producer) writes to the master the sentinels name, before a failover and after it."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from processes import required
from redis_sentinel import REDIS_SERVER, SentinelGroup

from cli.server_cmds import _ensure_redis
from shared.celery_app import (
    BROKER_MARKER_KEY,
    JOBS_QUEUE,
    MARKER_RUN_ID_WORD,
    VISIBILITY_TIMEOUT_SECONDS,
    broker_lost_its_keys,
    broker_transport_options,
    create_celery,
    enqueue_job,
)
from shared.celery_wire import JobPublisher
from shared.errors import ConfigError
from shared.redis_conn import (
    DEFAULT_SENTINEL_PORT,
    SentinelAddress,
    parse_sentinel_url,
    redis_client,
)
from shared.settings import Settings

MASTER = "stylequeue-conn-test"
SENTINEL_URL = "sentinel://:s3cret@10.0.0.1:26380/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26382"


def test_a_sentinel_url_in_kombus_form() -> None:
    assert parse_sentinel_url(SENTINEL_URL) == SentinelAddress(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", DEFAULT_SENTINEL_PORT), ("10.0.0.3", 26382)),
        db=2,
        username=None,
        password="s3cret",
    )
    repeated = "sentinel://u:p%40ss@a:1/3;sentinel://u:p%40ss@b:2/3"
    assert parse_sentinel_url(repeated) == SentinelAddress(
        sentinels=(("a", 1), ("b", 2)), db=3, username="u", password="p@ss"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://a:1;", "empty"),
        ("sentinel://a:1;redis://b:2", "not a sentinel://"),
        ("sentinel://a:1/zero", "database must be a number"),
        ("sentinel://:x@a:1;sentinel://:y@b:2", "different values of the password"),
        ("sentinel://a:1/1;sentinel://b:2/2", "different values of the db"),
        ("sentinel://a:1?ssl=true", "not supported"),
        ("sentinel://a:port", "Port could not be cast"),
        ("sentinel://", "names no host"),
    ],
)
def test_a_malformed_sentinel_url_is_a_config_error_naming_the_variable(
    url: str, says: str, tmp_path: Path
) -> None:
    env = {
        "STYLEQUEUE_REDIS_URL": url,
        "STYLEQUEUE_REDIS_SENTINEL_MASTER": MASTER,
        "STYLEQUEUE_DATA_DIR": str(tmp_path),
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.details == {"variable": "STYLEQUEUE_REDIS_URL"}
    assert says in str(caught.value)


def test_the_master_name_goes_with_a_sentinel_url_and_only_with_one(tmp_path: Path) -> None:
    base = {"STYLEQUEUE_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**base, "STYLEQUEUE_REDIS_URL": SENTINEL_URL})
    assert caught.value.details == {"variable": "STYLEQUEUE_REDIS_SENTINEL_MASTER"}
    assert "STYLEQUEUE_REDIS_SENTINEL_MASTER is required" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**base, "STYLEQUEUE_REDIS_SENTINEL_MASTER": MASTER})
    assert caught.value.details == {"variable": "STYLEQUEUE_REDIS_SENTINEL_MASTER"}
    settings = Settings.from_env(
        {**base, "STYLEQUEUE_REDIS_URL": SENTINEL_URL, "STYLEQUEUE_REDIS_SENTINEL_MASTER": MASTER}
    )
    assert (settings.redis_url, settings.redis_sentinel_master) == (SENTINEL_URL, MASTER)
    # Settings made in code without the name: the client is refused with the same message.
    with pytest.raises(ConfigError, match="STYLEQUEUE_REDIS_SENTINEL_MASTER"):
        redis_client(Settings(database_url="sqlite://", redis_url=SENTINEL_URL), timeout=1)


def test_without_sentinel_the_marker_says_only_whether_it_was_there(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        redis_url=redis_url,
        redis_prefix=f"{redis_prefix}conn-marker:",
    )
    client = redis.Redis.from_url(redis_url)
    key = f"{settings.redis_prefix}{BROKER_MARKER_KEY}"
    try:
        client.set(key, f"set by elsewhere/1 at 0 {MARKER_RUN_ID_WORD} another")
        assert not broker_lost_its_keys(settings)  # a plain redis:// URL: no run_id check
        assert not broker_lost_its_keys(settings)
    finally:
        client.delete(key)
        client.close()


def test_celery_gets_the_master_name_and_keeps_every_redis_option(tmp_path: Path) -> None:
    common = {"database_url": f"sqlite:///{tmp_path / 'unused.sqlite3'}", "redis_prefix": "p:"}
    plain = broker_transport_options(Settings(**common))
    sentinel = broker_transport_options(
        Settings(**common, redis_url=SENTINEL_URL, redis_sentinel_master=MASTER)
    )
    assert "master_name" not in plain
    assert sentinel["master_name"] == MASTER
    assert sentinel["sentinel_kwargs"]["socket_keepalive"] is True
    # The visibility timeout, key prefix, timeouts, keepalive and health checks carry over:
    # Kombu's sentinel channel is its redis channel with the master found by the sentinels.
    assert {k: v for k, v in sentinel.items() if k in plain} == plain
    assert plain["visibility_timeout"] == VISIBILITY_TIMEOUT_SECONDS
    assert plain["global_keyprefix"] == "p:"


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    if not os.access(REDIS_SERVER, os.X_OK):
        required("redis-server is needed (apt-get install redis-server)")
    started = SentinelGroup(tmp_path / "redis", MASTER)
    yield started
    started.stop()


def test_every_client_follows_the_master_through_a_failover(
    group: SentinelGroup, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {
            "STYLEQUEUE_REDIS_URL": group.url,
            "STYLEQUEUE_REDIS_SENTINEL_MASTER": MASTER,
            "STYLEQUEUE_REDIS_PREFIX": "conn:",
            "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        }
    )
    client = redis_client(settings, timeout=1.0)
    publisher = JobPublisher(settings)
    app = create_celery(settings)
    queue = f"conn:{JOBS_QUEUE}"
    marker = f"conn:{BROKER_MARKER_KEY}"
    try:
        for node, role in ((group.primary, "before"), (group.replica, "after")):
            assert client.set(f"conn:{role}", "1")
            publisher.publish(uuid.uuid4())
            enqueue_job(app, uuid.uuid4())
            # The reconciler's marker: new to the first master; on the promoted replica it
            # is there (replicated), yet written on another Redis process, whose last
            # messages may not have reached this one: lost keys once, then not again.
            assert node.client.exists(marker) == (role == "after")
            assert broker_lost_its_keys(settings)
            assert not broker_lost_its_keys(settings)
            # Written on the master the sentinels name: read there directly.
            assert node.client.get(f"conn:{role}") == "1"
            messages = [json.loads(m) for m in node.client.lrange(queue, 0, -1)]
            assert len(messages) == 2 and {m["headers"]["task"] for m in messages} == {
                "stylequeue.run_job"
            }
            node.client.delete(queue)
            if role == "before":
                # Every write so far on the replica too (replication is asynchronous).
                assert group.primary.client.execute_command("WAIT", 1, 5000) == 1
                group.kill_primary()
                group.wait_promoted()
    finally:
        client.close()
        publisher.close()
        app.close()
    assert group.replica.client.execute_command("ROLE")[0] == "master"


def test_stylequeue_up_leaves_a_sentinel_url_to_the_operator(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        redis_url=SENTINEL_URL,  # nothing listens at those addresses
        redis_sentinel_master=MASTER,
        data_dir=tmp_path,
    )
    assert _ensure_redis(settings) is None  # nothing started, nothing refused
    assert not (tmp_path / "redis.log").exists()
