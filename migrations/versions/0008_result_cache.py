"""What makes a job a repeat of another: its cache key, whether its result came from the cache, the job it follows.

Revision ID: 0008_result_cache
Revises: 0007_client_limits
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0008_result_cache"
down_revision: str | None = "0007_client_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
