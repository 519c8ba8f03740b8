"""Per-client limits and share (rate, burst, queued, running, weight) and a job's deadline.

``api_clients``: ``rate_limit`` (submits per second, sustained), ``rate_burst``
(submits at once), ``max_queued`` and ``max_running`` (jobs), each null for
the service's default (``STYLEQUEUE_RATE_LIMIT`` and the others; 0 in a
column: no limit for that client), and ``weight`` (its share when workers are
scarce, 1 by default). ``jobs.deadline_at``: when a job not finished by then is
canceled (``Cancel-After`` on the submit; null: never). An index on
``jobs (client_id, status)`` keeps the count of a client's queued and running
jobs, read on every submit and claim, from scanning all its jobs.

Revision ID: 0007_client_limits
Revises: 0006_job_warnings
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_client_limits"
down_revision: str | None = "0006_job_warnings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)

# Every step ALTERs its table in place, on SQLite too (3.35 or later drops a column): a
# batch copy of ``api_clients`` or ``jobs`` there would drop the old table, and with
# foreign keys on the drop deletes every client's jobs, or every job's events. The
# weight's default is a plain string for the same reason (an SQL expression makes
# Alembic copy the table).
CLIENT_COLUMNS = ("rate_limit", "rate_burst", "max_queued", "max_running", "weight")


def _client_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("rate_limit", sa.Float(), nullable=True),
        sa.Column("rate_burst", sa.Integer(), nullable=True),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False, server_default="1"),
    ]


def upgrade() -> None:
    for column in _client_columns():
        op.add_column("api_clients", column)
    op.add_column("jobs", sa.Column("deadline_at", UTC_TIMESTAMP, nullable=True))
    op.create_index("ix_jobs_client_status", "jobs", ["client_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_client_status", table_name="jobs")
    op.drop_column("jobs", "deadline_at")
    for name in reversed(CLIENT_COLUMNS):
        op.drop_column("api_clients", name)
