"""Fair share across clients: a job's priority and each client's place in the fair order.

(Filled in by the change that needs it; until then this revision changes nothing.)

Revision ID: 0009_fair_share
Revises: 0008_result_cache
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0009_fair_share"
down_revision: str | None = "0008_result_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
