"""Fixtures for the scaling tests: a pool of real worker processes (scaling_pool.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scaling_pool import PoolWorker, StartPool, WorkerPool, start_pool, stop_pool


@pytest.fixture(scope="module")
def worker_pool(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StartPool]:
    """Starts n workers sharing one PostgreSQL database, one Redis key space and one data dir."""
    started: list[PoolWorker] = []

    def start(n: int) -> WorkerPool:
        env = {
            "STYLEQUEUE_DATABASE_URL": postgresql_url,
            "STYLEQUEUE_REDIS_URL": redis_url,
            "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}pool-{len(started)}:",
            # The storage every worker reaches: here one directory; across machines
            # a shared volume mounted at the data dir (docs/deployment.md).
            "STYLEQUEUE_DATA_DIR": str(tmp_path_factory.mktemp("pool-data")),
            "STYLEQUEUE_DEVICE": "cpu",
            "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
            "STYLEQUEUE_LEASE_SECONDS": "30",
        }
        pool = start_pool(
            n,
            env=env,
            node_prefix=f"pool{len(started)}-{redis_prefix.strip(':')}-",
            log_dir=tmp_path_factory.mktemp("pool-logs"),
        )
        started.extend(pool.workers)
        return pool

    yield start
    stop_pool(started)
