"""Per-client limits and share (rate, burst, queued, running, weight) and a job's deadline.

Revision ID: 0007_client_limits
Revises: 0006_job_warnings
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007_client_limits"
down_revision: str | None = "0006_job_warnings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
