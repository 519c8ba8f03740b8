"""Memory-aware claims: the estimated peak memory of a job.

(Filled in by the change that needs it; until then this revision changes nothing.)

Revision ID: 0012_job_memory
Revises: 0011_job_follows
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0012_job_memory"
down_revision: str | None = "0011_job_follows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
