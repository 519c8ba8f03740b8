"""Headers that every response carries, so browsers treat what the API serves safely.

``X-Content-Type-Options: nosniff`` everywhere: a browser never second-guesses a
Content-Type (an uploaded PNG that is also something else stays an image).
``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no page, JSON or
image may be framed by another site (the /admin buttons cannot be clickjacked).

``Content-Security-Policy``: the /admin pages load scripts, styles, images and
``fetch`` only from this origin, with no inline script or style, and post forms
only here. ``/docs`` (the vendored Swagger UI) may likewise load scripts, styles
and requests from this origin only, with no inline script or style. Everything
else (JSON, images, ``/metrics``) gets a policy that loads nothing but images
and inline style (nothing else the API serves runs script).
"""

from __future__ import annotations

from flask import Flask, Response, request

ADMIN_PREFIX = "/admin"
ADMIN_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
API_POLICY = "; ".join(
    [
        "default-src 'none'",
        "img-src 'self'",
        "style-src 'unsafe-inline'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
# /docs runs the vendored Swagger UI: scripts, styles and requests from this origin
# only (no inline script, no eval, no inline style); its icons are data: images.
DOCS_PREFIX = "/docs"
DOCS_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def outside_app_headers() -> list[tuple[bytes, bytes]]:
    """The same headers for a response sent before or around the Flask app (the serving
    layer's own 408 and 500), which ``add_security_headers`` never sees."""
    headers = {**HEADERS, "Content-Security-Policy": API_POLICY}
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """Runs for every response Flask sends, error responses included. A view that set a
    policy of its own (a stricter one, e.g. ``sandbox`` for a file) keeps it."""
    for name, value in HEADERS.items():
        response.headers[name] = value
    path = request.path
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        policy = ADMIN_POLICY
    elif path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/"):
        policy = DOCS_POLICY
    else:
        policy = API_POLICY
    response.headers.setdefault("Content-Security-Policy", policy)
    return response
