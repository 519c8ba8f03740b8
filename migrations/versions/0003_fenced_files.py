"""Job files named by the attempt that wrote them, and the request's digest.

The row names the committed result, checkpoint and preview: a worker writes
only files of its own attempt, and only a file the row names is served or
resumed from. ``request_digest`` lets an Idempotency-Key replay tell a repeat
of the same request from a different request under the same key.

Revision ID: 0003_fenced_files
Revises: 0002_admin
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fenced_files"
down_revision: str | None = "0002_admin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILE_NAME = sa.String(length=64)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_file", FILE_NAME, nullable=True))
        batch.add_column(sa.Column("checkpoint_file", FILE_NAME, nullable=True))
        batch.add_column(sa.Column("preview_file", FILE_NAME, nullable=True))
        batch.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_digest")
        batch.drop_column("preview_file")
        batch.drop_column("checkpoint_file")
        batch.drop_column("result_file")
