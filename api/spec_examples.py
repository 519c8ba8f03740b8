"""An example request for every operation of ``/openapi.json``: a curl command (in the
operation's description, which /docs shows, and as ``x-codeSamples``), an example
value for each parameter and for the submit's form fields, and a job's ``warnings``.

``with_examples`` adds them to the spec's paths; an operation without an example
written here gets a plain one (its method and path, the key of its kind).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from shared.images import ImageInfo
from shared.input_warnings import input_warnings
from shared.params import parse_params

BASE = "http://localhost:8000"
JOB = "7062e67f-e075-415f-a230-69252ad5fd51"
AUTH = '-H "Authorization: Bearer $STYLEQUEUE_API_KEY"'
ADMIN = '-H "Authorization: Bearer $STYLEQUEUE_ADMIN_KEY"'
SUBMIT_PARAMS = {"size": 512, "iterations": 300, "style_weight": 1e6}

# Each operation's example request, by operationId.
CURL: dict[str, str] = {
    "submitJob": (
        f"curl {AUTH} -H 'Idempotency-Key: 4f1c2b9e-upload-1' \\\n"
        "  -F content=@photo.jpg -F style=@starry_night.jpg \\\n"
        f"  -F 'params={json.dumps(SUBMIT_PARAMS)}' \\\n"
        f"  {BASE}/v1/jobs"
    ),
    "listJobs": f"curl {AUTH} '{BASE}/v1/jobs?status=running&limit=20'",
    "getJob": f"curl {AUTH} {BASE}/v1/jobs/{JOB}",
    "cancelJob": f"curl -X POST {AUTH} {BASE}/v1/jobs/{JOB}/cancel",
    "getResult": f"curl {AUTH} -o result.png {BASE}/v1/jobs/{JOB}/result",
    "getPreview": f"curl {AUTH} -o preview.png {BASE}/v1/jobs/{JOB}/preview",
    "healthz": f"curl {BASE}/healthz",
    "readyz": f"curl {BASE}/readyz",
    "metrics": f'curl -H "Authorization: Bearer $STYLEQUEUE_METRICS_KEY" {BASE}/metrics',
    "adminListJobs": (
        f"curl {ADMIN} '{BASE}/v1/admin/jobs?status=failed,canceled&client_id=3"
        "&created_from=2026-11-28T00:00:00Z&limit=50'"
    ),
    "adminGetJob": f"curl {ADMIN} {BASE}/v1/admin/jobs/{JOB}",
    "adminCancelJob": f"curl -X POST {ADMIN} {BASE}/v1/admin/jobs/{JOB}/cancel",
    "adminRetryJob": f"curl -X POST {ADMIN} {BASE}/v1/admin/jobs/{JOB}/retry",
    "adminDeleteJobFiles": f"curl -X DELETE {ADMIN} {BASE}/v1/admin/jobs/{JOB}/files",
    "adminStats": f"curl {ADMIN} '{BASE}/v1/admin/stats?hours=168'",
    "adminWorkers": f"curl {ADMIN} '{BASE}/v1/admin/workers?all=true'",
}

# An example value for each parameter, by name.
PARAMETER_EXAMPLES: dict[str, Any] = {
    "job_id": JOB,
    "Idempotency-Key": "4f1c2b9e-upload-1",
    "Cancel-After": 3600,
    "status": "running",
    "limit": 20,
    "cursor": "eyJ0IjoiMjAyNi0xMS0yOFQxMjowMDowMFoiLCJpZCI6IjcwNjJlNjdmIn0",
    "client_id": 3,
    "worker": "gpu-1/4242",
    "created_from": "2026-11-28T00:00:00Z",
    "created_to": "2026-11-29T00:00:00Z",
    "hours": 168,
    "all": True,
}

# A job's warnings, as the submit of a 1000x150 transparent PNG with a 64 px style at
# the default size finds them (made by the function itself, so the wording is current).
WARNINGS_EXAMPLE: list[dict[str, str]] = [
    warning.to_dict()
    for warning in input_warnings(
        ImageInfo("PNG", 1000, 150, has_alpha=True),
        [ImageInfo("JPEG", 64, 64)],
        parse_params({}),
    )
]


def with_examples(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with every operation's example request and parameter examples added."""
    out = copy.deepcopy(paths)
    for path, operations in out.items():
        for method, operation in operations.items():
            curl = CURL.get(operation["operationId"]) or _plain_curl(method, path)
            operation["x-codeSamples"] = [{"lang": "Shell", "label": "curl", "source": curl}]
            about = operation.get("description", "")
            example = f"Example request:\n\n```shell\n{curl}\n```"
            operation["description"] = f"{about}\n\n{example}" if about else example
            for parameter in operation.get("parameters", []):
                if parameter["name"] in PARAMETER_EXAMPLES:
                    parameter["example"] = PARAMETER_EXAMPLES[parameter["name"]]
    submit = out["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    submit["schema"]["properties"]["params"]["example"] = json.dumps(SUBMIT_PARAMS)
    return out


def _plain_curl(method: str, path: str) -> str:
    key = ADMIN if path.startswith("/v1/admin/") else AUTH
    verb = "" if method == "get" else f"-X {method.upper()} "
    return f"curl {verb}{key} {BASE}{path.replace('{job_id}', JOB)}"
