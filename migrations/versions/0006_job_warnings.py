"""A job's input warnings (a JSON list, set when it is submitted).

Revision ID: 0006_job_warnings
Revises: 0005_job_losses
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006_job_warnings"
down_revision: str | None = "0005_job_losses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
