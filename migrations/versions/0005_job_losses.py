"""A compact loss curve per attempt of a job, and the GPU memory a worker holds.

``job_losses``: one row per (job, attempt), its ``points`` a JSON list of at
most a few hundred ``[iteration, loss, content, style, tv]`` (the worker
downsamples as it goes). ``workers.device_memory_used_bytes``: the memory the
worker process holds on its GPU, as of its last beat (null on the CPU).

Revision ID: 0005_job_losses
Revises: 0004_admin_sessions
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_job_losses"
down_revision: str | None = "0004_admin_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_losses",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("points", JSON, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_losses_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_job_losses")),
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("device_memory_used_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("device_memory_used_bytes")
    op.drop_table("job_losses")
