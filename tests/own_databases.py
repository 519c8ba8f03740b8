"""A PostgreSQL database of a test module's own, beside the run's, migrated and dropped after.

For tests whose processes must not see the run's other jobs (a reconciler
re-sends every stale job it finds) or whose counts must start from nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

import migrations


@contextlib.contextmanager
def own_postgresql_database(beside_url: str, name: str) -> Iterator[str]:
    """Create database ``name`` on the server of ``beside_url``, migrate it, yield its URL,
    and drop it (closing its connections) afterwards."""
    base = beside_url.rsplit("/", 1)[0]
    admin_url = f"{base}/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{base}/{name}"
        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
