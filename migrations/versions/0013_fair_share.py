"""Fair share across clients: a job's priority and each client's place in the fair order.

``jobs.priority``: the submit's ``priority`` option (-10..10, 0 for every row from
before), which orders a client's own queued jobs (higher first, then oldest first).
``api_clients.fair_tag``: the virtual start time of the client's latest started job
in the weighted fair order (``shared.fair_share``); null for a client that has
never had a job started. ``jobs.queue_name``: the broker key space
(``STYLEQUEUE_REDIS_PREFIX``) its message went to; a worker chooses among the jobs
of its own key space only (empty for rows from before, which start by their own
message). An index on ``jobs (client_id, status, queue_name, priority,
created_at, id)`` makes a client's next job in its own order one index range read.

(Revision 0009 was reserved for this and shipped empty; a database already past it
gets the columns here.)

Revision ID: 0013_fair_share
Revises: 0012_job_memory
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_fair_share"
down_revision: str | None = "0012_job_memory"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_jobs_client_fair"

# Each step ALTERs the table in place, on SQLite too (see 0008): never a batch copy.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("api_clients", sa.Column("fair_tag", sa.Float(), nullable=True))
    op.add_column(
        "jobs", sa.Column("queue_name", sa.String(128), nullable=False, server_default="")
    )
    op.create_index(
        INDEX,
        "jobs",
        ["client_id", "status", "queue_name", "priority", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")  # SQLite drops no column an index names
    op.drop_column("jobs", "queue_name")
    op.drop_column("api_clients", "fair_tag")
    op.drop_column("jobs", "priority")
