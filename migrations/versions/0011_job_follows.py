"""In-flight sharing: a job that follows an identical job's run instead of running its own.

(Filled in by the change that needs it; until then this revision changes nothing.)

Revision ID: 0011_job_follows
Revises: 0010_webhooks
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0011_job_follows"
down_revision: str | None = "0010_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
