"""A job's input warnings: ``jobs.warnings``, a JSON list set when the job is submitted.

Each item is ``{"code": ..., "message": ...}``, from ``shared.input_warnings``
(an elongated or small content, a small style, transparency). Not null; every
row has an empty list by default, so rows from before this revision read as a
job without warnings.

Revision ID: 0006_job_warnings
Revises: 0005_job_losses
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_job_warnings"
down_revision: str | None = "0005_job_losses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


# Both steps ALTER the table in place, on SQLite too (3.35 or later drops a column):
# a batch copy of ``jobs`` there would drop the old table, and with foreign keys on
# the drop deletes every job's events and loss curves with it. The default is a
# plain string for the same reason (an SQL expression makes Alembic copy the table).


def upgrade() -> None:
    op.add_column("jobs", sa.Column("warnings", JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    op.drop_column("jobs", "warnings")
