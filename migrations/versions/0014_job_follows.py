"""In-flight sharing: a job that follows an identical job's run instead of running its own.

``jobs.follows``: the id of the identical job (same result cache key, same scope)
that was queued or running when this one was submitted, and whose run this one
shares (``shared.follows``); null for a job that runs its own computation, and for
every row from before. Indexed: each change of a job's progress looks up its
followers.

(Revision 0011 was reserved for this and shipped empty; a database already past it
gets the column here.)

Revision ID: 0014_job_follows
Revises: 0013_fair_share
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_job_follows"
down_revision: str | None = "0013_fair_share"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_jobs_follows"

# In place (ALTER TABLE ... ADD COLUMN), on SQLite too: a batch copy of ``jobs`` would
# drop the old table, and with foreign keys on the drop deletes every job's events.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("follows", sa.Uuid(), nullable=True))
    op.create_index(INDEX, "jobs", ["follows"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")  # SQLite drops no column an index names
    op.drop_column("jobs", "follows")
