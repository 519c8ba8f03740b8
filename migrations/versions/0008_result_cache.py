"""The result cache: what makes a job a repeat of another, and whether its result was copied.

``jobs.cache_key``: the sha256 over the job's input bytes, its parameters with
every default filled in, the engine's version and the weights' identity
(``shared.result_cache``); null for rows from before this revision, which the
cache never serves from. ``jobs.cached``: true when the job's result was copied
from an earlier succeeded job with the same key instead of computed (false for
every row from before). ``jobs.cached_from``: that earlier job's id. An index on
``jobs (cache_key, status, created_at)`` makes the submit's lookup of a key's
succeeded jobs, newest first, one index probe read in order and stopped after a
few rows, however many repeats the key has had.

Revision ID: 0008_result_cache
Revises: 0007_client_limits
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_result_cache"
down_revision: str | None = "0007_client_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_jobs_cache_key"

# Each step ALTERs the table in place, on SQLite too (3.35 or later drops a column): a
# batch copy of ``jobs`` there would drop the old table, and with foreign keys on the
# drop would delete every job's events with it. The default is a plain string ("0",
# false on both databases) for the same reason.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("cached", sa.Boolean(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("cached_from", sa.Uuid(), nullable=True))
    op.create_index(INDEX, "jobs", ["cache_key", "status", "created_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")  # SQLite drops no column an index names
    for column in ("cached_from", "cached", "cache_key"):
        op.drop_column("jobs", column)
