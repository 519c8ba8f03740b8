"""The HTTP API: ``create_app(settings)`` builds a Flask app; views stay thin."""

from __future__ import annotations

from flask import Flask

from api import (
    admin,
    admin_ui,
    docs_page,
    errors,
    health,
    jobs,
    metrics,
    openapi,
    security_headers,
    webhooks,
)
from api.services import Services
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Werkzeug answers 413 for a body over this before any view runs; the
    # per-file limit is checked again in the view with a clearer message.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    Services.init_app(app, settings)
    errors.init_app(app)
    security_headers.init_app(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(docs_page.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(webhooks.blueprint)
    admin_ui.init_app(app)
    return app
