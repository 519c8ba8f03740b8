"""/docs: the API reference drawn by the vendored Swagger UI from /openapi.json, under a
policy that lets it load this origin's files only; an example request per operation."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flask.testing import FlaskClient

from api.openapi import openapi_spec

STATIC = Path(__file__).parents[2] / "api" / "docs_static"


def test_docs_loads_only_its_own_scripts_and_styles(http: FlaskClient) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "\\u0027" not in html and "&#39;" not in html.split("<body>")[0]
    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert set(sources) == {
        "/docs/static/swagger-ui.css",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/docs.js",
    }
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    assert not re.search(r"<style\b|<[^>]+\sstyle\s*=", html)  # no inline style
    policy = dict(
        d.strip().split(" ", 1) for d in page.headers["Content-Security-Policy"].split(";")
    )
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["default-src"] == "'none'"
    assert "unsafe" not in page.headers["Content-Security-Policy"]
    for source in sources:
        asset = http.get(source)
        assert asset.status_code == 200, source
        assert asset.mimetype in ("text/javascript", "application/javascript", "text/css")
    # Without JavaScript the page still names every operation.
    for path, operations in openapi_spec()["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in html


def test_the_vendored_renderer_is_the_one_its_readme_names() -> None:
    readme = (STATIC / "README.md").read_text()
    assert "`swagger-ui-dist`" in readme and "5.35.0" in readme and "Apache-2.0" in readme
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, name
    assert "Apache License" in (STATIC / "LICENSE").read_text()
    assert "sourceMappingURL" not in (STATIC / "swagger-ui.css").read_text()


def test_every_operation_has_an_example_request() -> None:
    spec = openapi_spec()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            samples = operation["x-codeSamples"]
            assert samples[0]["lang"] == "Shell" and samples[0]["source"].startswith("curl ")
            # The example calls this very path (path parameters filled in).
            pattern = re.escape(path).replace(r"\{job_id\}", "[0-9a-f-]{36}")
            assert re.search(pattern + r"(\?|\s|'|$)", samples[0]["source"]), (method, path)
            assert "Example request" in operation["description"]
            for parameter in operation.get("parameters", []):
                assert "example" in parameter, (method, path, parameter["name"])
