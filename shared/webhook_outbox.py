"""The webhooks' outbox: the deliveries a job change writes, in its own transaction, and
what the senders and readers do with them.

``record_change`` is called by ``shared.job_store.guarded_update`` between its
UPDATE and its COMMIT, so a delivery exists exactly when the change it reports
is committed: a claim writes ``start``, a move to an end state (succeeded,
failed, canceled, whoever makes it) ``completed``, a progress write
``progress`` (at most one per job every ``PROGRESS_EVERY_SECONDS``); each only
for a job whose webhook asked for that event. The delivery's body is the job's
JSON as that transaction leaves it (read in it, after the UPDATE), so a ``start``
says ``running`` even when the sender gets to it after the job ended. A job born
finished (the result cache) gets its ``completed`` delivery from ``submit_rows``,
committed with the job's row; its body is made at the first attempt (nothing
about it changes after).

A sender (``worker.webhook_sender``) claims a due delivery with one conditional
UPDATE (so two never make the same attempt at once), makes the attempt and
records it under its claim's token (``record_attempt``): delivered on a 2xx,
else due again after the next wait of the retry schedule (its last wait
repeated; a wait that would end more than ``GIVE_UP_SECONDS`` after the event, or
its redelivery, ends then instead: a last attempt), given up when an attempt made
that late fails too.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import NotFoundError
from shared.job_json import job_dict
from shared.job_view import JOB_VIEW_COLUMNS, JobView
from shared.models import (
    FINISHED_STATUSES,
    TRANSITIONS,
    ApiClient,
    Job,
    JobWebhook,
    Transition,
    WebhookDelivery,
    utcnow,
)
from shared.webhooks import GIVE_UP_SECONDS, PROGRESS_EVERY_SECONDS, WebhookRequest

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
JOB_WEBHOOKS = cast(Table, JobWebhook.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)


def event_of(transition: Transition | None) -> str | None:
    """The webhook event a transition makes: a claim ``start``, an end state ``completed``."""
    if transition is None:
        return None
    if transition == TRANSITIONS.claim:
        return "start"
    if transition.target in FINISHED_STATUSES:
        return "completed"
    return None


def _delivery(
    job_id: uuid.UUID, event: str, url: str, now: datetime, body: str | None = None
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "message_id": f"msg_{uuid.uuid4().hex}",
        "event": event,
        "url": url,
        "state": PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "last_attempt_at": None,
        "delivered_at": None,
        "status_code": None,
        "error": None,
        "claimed_by": None,
        "claimed_until": None,
        "body": body,
        "attempt_log": [],
    }


def record_change(session: Session, job_id: uuid.UUID, event: str) -> None:
    """Add the delivery of ``event`` for job ``job_id`` to ``session``'s transaction, if the
    job has a webhook asking for it (``progress``: only if its last was long enough ago)."""
    now = utcnow()
    if event == "progress":
        found = session.execute(
            update(JobWebhook)
            .where(
                JobWebhook.job_id == job_id,
                JobWebhook.events.contains("progress"),
                or_(
                    JobWebhook.progress_at.is_(None),
                    JobWebhook.progress_at <= now - timedelta(seconds=PROGRESS_EVERY_SECONDS),
                ),
            )
            .values(progress_at=now)
            .returning(JobWebhook.url)
        ).one_or_none()
        url = None if found is None else str(found[0])
    else:
        hook = session.execute(
            select(JobWebhook.url, JobWebhook.events).where(JobWebhook.job_id == job_id)
        ).one_or_none()
        url = hook.url if hook is not None and event in hook.events.split(",") else None
    if url is not None:
        session.execute(
            DELIVERIES.insert(), _delivery(job_id, event, url, now, body_now(session, job_id))
        )


def body_now(session: Session, job_id: uuid.UUID) -> str:
    """The job's JSON as ``GET /v1/jobs/{id}`` would answer it, read in ``session`` (so an
    uncommitted change of its transaction shows)."""
    row = session.execute(select(*JOB_VIEW_COLUMNS).where(Job.id == job_id)).one()
    return json.dumps(job_dict(JobView(*row)), separators=(",", ":"), allow_nan=False)


def submit_rows(
    job_id: uuid.UUID, webhook: WebhookRequest, *, finished: bool, now: datetime
) -> list[tuple[Table, dict[str, Any]]]:
    """The rows a submit with ``webhook`` commits beside the job's: its webhook, and, for a
    job born finished, its ``completed`` delivery."""
    rows: list[tuple[Table, dict[str, Any]]] = [
        (
            JOB_WEBHOOKS,
            {
                "job_id": job_id,
                "url": webhook.url,
                "events": webhook.events_text,
                "progress_at": None,
            },
        )
    ]
    if finished and "completed" in webhook.events:
        rows.append((DELIVERIES, _delivery(job_id, "completed", webhook.url, now)))
    return rows


# ---------------------------------------------------------------- sending


class Due(NamedTuple):
    """A delivery a sender has claimed: what it needs to make the attempt."""

    id: int
    token: str  # the claim's: every write of this attempt carries it
    job_id: uuid.UUID
    message_id: str
    event: str
    url: str
    body: str | None
    secret: str | None


def claim_due(session: Session, sender: str, *, hold_seconds: float, limit: int = 10) -> list[Due]:
    """Claim up to ``limit`` due deliveries for ``sender``, each with one conditional UPDATE,
    for ``hold_seconds`` (another sender takes it again after that)."""
    now = utcnow()
    due = [
        WebhookDelivery.state == PENDING,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
    ]
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(*due)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    session.rollback()
    claimed: list[Due] = []
    for delivery_id in ids:
        token = f"{sender}:{uuid.uuid4().hex[:12]}"
        row = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, *due)
            .values(claimed_by=token, claimed_until=now + timedelta(seconds=hold_seconds))
            .returning(
                WebhookDelivery.job_id,
                WebhookDelivery.message_id,
                WebhookDelivery.event,
                WebhookDelivery.url,
                WebhookDelivery.body,
            )
        ).one_or_none()
        session.commit()
        if row is None:
            continue  # another sender took it
        secret = session.scalar(
            select(ApiClient.webhook_secret)
            .join(Job, Job.client_id == ApiClient.id)
            .where(Job.id == row.job_id)
        )
        session.rollback()
        claimed.append(
            Due(
                delivery_id, token, row.job_id, row.message_id, row.event, row.url, row.body, secret
            )
        )
    return claimed


def store_body(session: Session, due: Due, body: str) -> bool:
    """Keep ``body`` as the delivery's (its first attempt's), while ``due``'s claim holds."""
    done = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.id, WebhookDelivery.claimed_by == due.token)
        .values(body=body)
        .returning(WebhookDelivery.id)
    ).one_or_none()
    session.commit()
    return done is not None


def record_attempt(
    session: Session,
    due: Due,
    *,
    status_code: int | None,
    error: str | None,
    seconds: float,
    schedule: tuple[float, ...],
) -> str | None:
    """Record the attempt ``due`` made, while its claim holds; returns the delivery's state
    after it (None: the claim was lost, nothing recorded)."""
    now = utcnow()
    row = session.get(WebhookDelivery, due.id, with_for_update=False)
    if row is None or row.claimed_by != due.token:
        session.rollback()
        return None
    entry = {
        "at": _iso(now),
        "status_code": status_code,
        "error": error,
        "seconds": round(seconds, 3),
    }
    log = [*row.attempt_log, entry]
    ok = error is None and status_code is not None and 200 <= status_code < 300
    values: dict[str, Any] = {
        "attempts": row.attempts + 1,
        "last_attempt_at": now,
        "status_code": status_code,
        "error": error,
        "claimed_by": None,
        "claimed_until": None,
        "attempt_log": log,
    }
    if ok:
        values |= {"state": DELIVERED, "delivered_at": now, "next_attempt_at": None}
    else:
        failures, since = _failures_since_start(log, row.created_at)
        # The schedule's last wait repeats until the 24 hours are up.
        wait = schedule[min(failures, len(schedule)) - 1]
        next_at = now + timedelta(seconds=wait)
        last_at = since + timedelta(seconds=GIVE_UP_SECONDS)
        if now >= last_at:
            values |= {"state": FAILED, "next_attempt_at": None}
        else:  # a wait that would end past the 24 hours ends at them: one last attempt
            values |= {"next_attempt_at": min(next_at, last_at)}
    done = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.id, WebhookDelivery.claimed_by == due.token)
        .values(**values)
        .returning(WebhookDelivery.state)
    ).one_or_none()
    session.commit()
    return None if done is None else str(done[0])


def _failures_since_start(log: list[dict[str, Any]], created_at: datetime) -> tuple[int, datetime]:
    # The attempts since the delivery began, or since its last redelivery, and when that was.
    failures, since = 0, created_at
    for entry in log:
        if entry.get("redelivered_by") is not None:
            failures, since = 0, datetime.fromisoformat(entry["at"])
        else:
            failures += 1
    return failures, since


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- reading, redelivering


def list_deliveries(session: Session, job_id: uuid.UUID) -> list[WebhookDelivery]:
    """The job's deliveries, oldest first."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        ).all()
    )


def delivery_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery as the API and /admin show it."""

    def at(value: datetime | None) -> str | None:
        return None if value is None else _iso(value)

    return {
        "id": delivery.message_id,
        "event": delivery.event,
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "created_at": at(delivery.created_at),
        "next_attempt_at": at(delivery.next_attempt_at),
        "last_attempt_at": at(delivery.last_attempt_at),
        "delivered_at": at(delivery.delivered_at),
        "status_code": delivery.status_code,
        "error": delivery.error,
        "log": [
            {
                "at": entry["at"],
                "status_code": entry.get("status_code"),
                "error": entry.get("error"),
                "seconds": entry.get("seconds"),
                "redelivered_by": entry.get("redelivered_by"),
            }
            for entry in delivery.attempt_log
        ],
    }


def redeliver(session: Session, job_id: uuid.UUID, message_id: str, *, by: str) -> WebhookDelivery:
    """Make the delivery ``message_id`` of job ``job_id`` due again now (same id and body: a
    receiver that saw it already can tell), its retry schedule started over. A 404 if none."""
    delivery = session.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.job_id == job_id, WebhookDelivery.message_id == message_id
        )
    ).one_or_none()
    if delivery is None:
        raise NotFoundError(
            f"no webhook delivery {message_id!r} of job {job_id}", code="delivery_not_found"
        )
    now = utcnow()
    delivery.attempt_log = [*delivery.attempt_log, {"at": _iso(now), "redelivered_by": by}]
    delivery.state = PENDING
    delivery.next_attempt_at = now
    delivery.claimed_by = None
    delivery.claimed_until = None
    session.commit()
    return delivery
