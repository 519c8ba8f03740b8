"""The admin API: the workers registry and the indexes the admin list needs.

Revision ID: 0002_admin
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_admin"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("device_name", sa.String(length=200), nullable=True),
        sa.Column("device_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_heartbeat_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("current_job_id", sa.Uuid(), nullable=True),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    # Keyset pages (created_at, id) for every filter shape of the admin list.
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_worker_created", "jobs", ["worker", "created_at", "id"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_worker_created", table_name="jobs")
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.drop_table("workers")
