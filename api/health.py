"""Liveness and readiness, for load balancers and compose healthchecks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError

from api.errors import error_response
from api.schemas import Health
from api.services import services
from shared.errors import ServiceUnavailableError

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up; says nothing about its dependencies."""
    return jsonify(Health(status="ok").model_dump())


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready to serve: the database and Redis both answer; 503 naming the one that does not."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.db.ping()
        checks["database"] = "ok"
    except ServiceUnavailableError:
        checks["database"] = "unavailable"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except (RedisError, OSError):
        checks["redis"] = "unavailable"
    down = sorted(name for name, state in checks.items() if state != "ok")
    if down:
        return error_response(
            503, "service_unavailable", f"not ready: {', '.join(down)} unavailable", checks
        )
    return jsonify(Health(status="ready", checks=checks).model_dump())
