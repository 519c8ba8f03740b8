"""A job's webhook deliveries as the client reads them (``GET /v1/jobs/{id}/webhooks``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WebhookAttempt:
    """One attempt to deliver (or, with ``redelivered_by``, an operator's redelivery)."""

    at: str
    status_code: int | None  # the receiver's answer; None: no answer (refused, timed out)
    error: str | None  # None: delivered
    seconds: float | None
    redelivered_by: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookAttempt:
        return cls(
            at=data["at"],
            status_code=data.get("status_code"),
            error=data.get("error"),
            seconds=data.get("seconds"),
            redelivered_by=data.get("redelivered_by"),
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One event of a job to deliver to its webhook, and how its attempts went."""

    id: str  # the webhook-id header of every attempt
    event: str  # start, progress or completed
    url: str
    state: str  # pending, delivered or failed (given up)
    attempts: int
    created_at: str
    next_attempt_at: str | None
    last_attempt_at: str | None
    delivered_at: str | None
    status_code: int | None
    error: str | None
    log: tuple[WebhookAttempt, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookDelivery:
        return cls(
            id=data["id"],
            event=data["event"],
            url=data["url"],
            state=data["state"],
            attempts=int(data["attempts"]),
            created_at=data["created_at"],
            next_attempt_at=data.get("next_attempt_at"),
            last_attempt_at=data.get("last_attempt_at"),
            delivered_at=data.get("delivered_at"),
            status_code=data.get("status_code"),
            error=data.get("error"),
            log=tuple(WebhookAttempt.from_json(entry) for entry in data.get("log", [])),
        )
