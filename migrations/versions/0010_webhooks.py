"""Webhooks: each client's signing secret, a job's webhook URL and events, and the log of deliveries.

(Filled in by the change that needs it; until then this revision changes nothing.)

Revision ID: 0010_webhooks
Revises: 0009_fair_share
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0010_webhooks"
down_revision: str | None = "0009_fair_share"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
