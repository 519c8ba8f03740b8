"""Memory-aware claims: the estimated peak memory of a job, and each worker's budget.

``jobs.memory_estimate``: the job's estimated peak device memory in bytes, computed
at submit (``shared.memory_estimate``); null for every row from before, which any
worker may claim. ``workers.memory_budget_bytes``: the most a job's estimate may be
for that worker to claim it; null for workers registered before, which claim any.

Revision ID: 0012_job_memory
Revises: 0011_job_follows
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_job_memory"
down_revision: str | None = "0011_job_follows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# In place (ALTER TABLE ... ADD COLUMN), on SQLite too: a batch copy of ``jobs`` would
# drop the old table, and with foreign keys on the drop deletes every job's events.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("memory_estimate", sa.BigInteger(), nullable=True))
    op.add_column("workers", sa.Column("memory_budget_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "memory_budget_bytes")
    op.drop_column("jobs", "memory_estimate")
