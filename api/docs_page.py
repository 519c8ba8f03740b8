"""``/docs``: the API reference, drawn in the browser by Swagger UI from ``/openapi.json``.

The renderer is vendored in ``api/docs_static`` (its README says which package,
version and licence): nothing is fetched from another site. The page has no
inline script; its Content-Security-Policy (``api.security_headers``) allows
scripts, styles and requests from this origin only. Without JavaScript the page
still lists every operation and schema, linking to the spec.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from api.openapi import openapi_spec

blueprint = Blueprint(
    "docs",
    __name__,
    static_folder="docs_static",
    static_url_path="/docs/static",
)


@blueprint.get("/docs")
def docs() -> str:
    return render_template("docs.html", spec=openapi_spec())
