"""A Python client for the stylequeue HTTP API (httpx).

    from client import StylequeueClient

    with StylequeueClient("http://127.0.0.1:8000", api_key) as sq:
        job = sq.submit("photo.jpg", ["starry_night.jpg"], {"size": 512})
        job = sq.wait(job.id, on_progress=lambda j: print(j.progress.percent))
        sq.download(job.id, "out.png")

It imports nothing of the server (no torch, no Flask): install it to talk to one.
"""

from client.api import DEFAULT_TIMEOUT_S, ImageSource, ProgressCallback, StylequeueClient
from client.errors import (
    APIError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    StylequeueClientError,
    TransportError,
    UnauthorizedError,
    WaitTimeoutError,
)
from client.models import (
    Job,
    JobError,
    JobMemory,
    JobPage,
    JobProgress,
    JobQueue,
    JobStatus,
    JobUrls,
    JobWarning,
)
from client.webhooks import WebhookAttempt, WebhookDelivery

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "APIError",
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "ImageSource",
    "InvalidResponseError",
    "Job",
    "JobError",
    "JobPage",
    "JobProgress",
    "JobStatus",
    "JobUrls",
    "JobMemory",
    "JobQueue",
    "JobWarning",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProgressCallback",
    "RateLimitedError",
    "ServerError",
    "StylequeueClient",
    "StylequeueClientError",
    "TransportError",
    "UnauthorizedError",
    "WaitTimeoutError",
    "WebhookAttempt",
    "WebhookDelivery",
]
