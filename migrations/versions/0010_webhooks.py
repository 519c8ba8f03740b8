"""Webhooks: each client's signing secret, a job's webhook URL and events, and the log of deliveries.

``api_clients.webhook_secret``: the client's ``whsec_…`` secret that signs its
webhooks (null for clients from before this revision until the secret is rotated).
``job_webhooks``: one row per job submitted with a webhook, its URL, the events
it asked for and when its last ``progress`` delivery was written (the 2 s
throttle). ``webhook_deliveries``: the outbox and its log, one row per event to
deliver, written in the transaction of the job change that causes it; the
workers claim the due ones (``state``, ``next_attempt_at``) and record each
attempt in ``attempt_log``.

Revision ID: 0010_webhooks
Revises: 0009_fair_share
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010_webhooks"
down_revision: str | None = "0009_fair_share"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DUE_INDEX = "ix_webhook_deliveries_state_next_attempt_at"
JOB_INDEX = "ix_webhook_deliveries_job_id_id"

# The column is added in place (no batch copy of api_clients on SQLite: a copy would
# drop the table, and with foreign keys on, every job of every client with it).


def upgrade() -> None:
    op.add_column("api_clients", sa.Column("webhook_secret", sa.String(80), nullable=True))
    op.create_table(
        "job_webhooks",
        sa.Column(
            "job_id",
            sa.Uuid(),
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_webhooks_job_id_jobs"),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.String(64), nullable=False),
        sa.Column("progress_at", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_webhooks"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "job_id",
            sa.Uuid(),
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_webhook_deliveries_job_id_jobs"),
            nullable=False,
        ),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("last_attempt_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("delivered_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("claimed_until", UTC_TIMESTAMP, nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("attempt_log", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("message_id", name="uq_webhook_deliveries_message_id"),
    )
    op.create_index(DUE_INDEX, "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index(JOB_INDEX, "webhook_deliveries", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index(JOB_INDEX, table_name="webhook_deliveries")
    op.drop_index(DUE_INDEX, table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("job_webhooks")
    op.drop_column("api_clients", "webhook_secret")
