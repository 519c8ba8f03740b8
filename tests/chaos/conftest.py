"""Fixtures for the chaos test: a database of its own on the run's PostgreSQL server.

The chaos test reuses the fault tests' process helpers (real workers, the real API, a
Redis of its own), which live beside them in tests/service.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from own_databases import own_postgresql_database

SERVICE_TESTS = Path(__file__).resolve().parent.parent / "service"
if str(SERVICE_TESTS) not in sys.path:
    sys.path.append(str(SERVICE_TESTS))


@pytest.fixture(scope="module")
def chaos_database(postgresql_url: str) -> Iterator[str]:
    """A fresh, migrated database beside the run's (the reconciler re-sends every stale
    job it finds, and the run's database holds other tests' queued jobs); dropped after."""
    name = postgresql_url.rsplit("/", 1)[1]
    with own_postgresql_database(postgresql_url, f"{name}_chaos") as url:
        yield url
