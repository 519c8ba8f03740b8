"""Batches: the output shape a worker's batch of jobs shares.

``jobs.batch_shape``: the job's output "WxH" (the longer side is its ``size``, the
content's aspect ratio kept), computed at submit. A worker that runs several jobs
together on its device (``STYLEQUEUE_BATCH_MAX``) takes only jobs of its batch's
shape; null for every row from before, which never joins a batch (each still runs
on its own).

Revision ID: 0015_batch_shape
Revises: 0014_job_follows
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_batch_shape"
down_revision: str | None = "0014_job_follows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# In place (ALTER TABLE ... ADD COLUMN), on SQLite too: a batch copy of ``jobs`` would
# drop the old table, and with foreign keys on the drop deletes every job's events.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_shape", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "batch_shape")
