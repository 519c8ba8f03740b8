"""``/admin``: the operators' web page (server-rendered Jinja, one small JS file, one CSS file).

Pages: the job table (filters with counts, a search by id, thumbnails, live
progress and new jobs as they arrive, bulk actions), a job with its timeline,
loss curve and actions, statistics with SVG charts, the workers. Everything but
the login form and the static files needs an admin session (see ``auth``).
"""

from __future__ import annotations

from flask import Flask

from api.admin_ui import (  # noqa: F401  (job_pages' and images' routes join the blueprint)
    auth,
    images,
    job_pages,
    webhook_pages,
)
from api.admin_ui.views import blueprint


def init_app(app: Flask) -> None:
    auth.init_app(app)
    app.register_blueprint(blueprint)


__all__ = ["init_app", "blueprint"]
