"""A submit's request, read as sent: an Idempotency-Key answers only the request it was first
sent with (a different one is a 422), and a ``params`` part sent as a file is read, not
dropped (``curl -F params=@params.json``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from api.services import EXTENSION_KEY
from shared import submissions
from shared.auth import authenticate
from shared.params import parse_params

Submit = Callable[..., Any]
TINY = {"size": 32, "iterations": 2, "scales": 1}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def test_the_same_key_and_request_replay_the_job(submit: Submit) -> None:
    first = submit(headers=keyed("same-1"))
    assert first.status_code == 202
    again = submit(headers=keyed("same-1"))
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


def test_the_same_parameters_written_differently_are_the_same_request(submit: Submit) -> None:
    first = submit(params=TINY, headers=keyed("same-2"))
    assert first.status_code == 202
    # Other key order, defaults spelt out: the job would be the same, so it is a replay.
    spelt_out = json.dumps({"scales": 1, "optimizer": "lbfgs", "iterations": 2, "size": 32})
    again = submit(params=spelt_out, headers=keyed("same-2"))
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.json["id"] == first.json["id"]


def test_a_key_sent_again_with_other_images_is_a_422_naming_it(
    submit: Submit, image_bytes: Callable[[str], bytes], counts: Callable[[], Any]
) -> None:
    first = submit(headers=keyed("reused-1"))
    assert first.status_code == 202
    before = counts()
    other = submit(styles=[image_bytes("shipwreck")], headers=keyed("reused-1"))
    assert other.status_code == 422, other.get_data(as_text=True)
    error = other.json["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "'reused-1'" in error["message"] and first.json["id"] in error["message"]
    assert error["details"] == {
        "field": "Idempotency-Key",
        "idempotency_key": "reused-1",
        "job_id": first.json["id"],
    }
    assert counts() == before, "a 422 creates nothing"


def test_a_key_sent_again_with_other_parameters_or_a_broken_request_is_a_422(
    submit: Submit,
) -> None:
    assert submit(params=TINY, headers=keyed("reused-2")).status_code == 202
    assert submit(params={**TINY, "seed": 7}, headers=keyed("reused-2")).status_code == 422
    assert submit(params="{not json", headers=keyed("reused-2")).status_code == 422
    assert submit(params=TINY, headers=keyed("reused-2")).status_code == 200


def test_a_job_stored_without_a_digest_still_replays(
    app: Any, submit: Submit, auth: dict[str, str], image_bytes: Callable[[str], bytes]
) -> None:
    # A job from before digests were kept: its key replays it, whatever the request.
    services = app.extensions[EXTENSION_KEY]
    with services.db.session() as session:
        client_id = authenticate(session, auth["Authorization"].removeprefix("Bearer ")).client_id
        job, _ = submissions.create_job(
            session,
            services.storage,
            client_id=client_id,
            params=parse_params(TINY),
            content=image_bytes("tubingen"),
            styles=[image_bytes("starry_night")],
            idempotency_key="legacy-1",
            enqueue=lambda _job_id: None,
        )
    replay = submit(styles=[image_bytes("shipwreck")], headers=keyed("legacy-1"))
    assert replay.status_code == 200
    assert replay.json["id"] == str(job.id)


# ---------------------------------------------------------------- the params part


def post_parts(http: FlaskClient, auth: dict[str, str], parts: dict[str, Any]) -> Any:
    return http.post("/v1/jobs", data=parts, headers=auth, content_type="multipart/form-data")


def images(image_bytes: Callable[[str], bytes]) -> dict[str, Any]:
    return {
        "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
        "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
    }


def test_params_sent_as_a_file_are_the_jobs_parameters(
    http: FlaskClient, auth: dict[str, str], image_bytes: Callable[[str], bytes]
) -> None:
    params = json.dumps({"size": 48, "iterations": 3, "scales": 1}).encode()
    response = post_parts(
        http, auth, {**images(image_bytes), "params": (io.BytesIO(params), "params.json")}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.json["params"]["size"] == 48
    assert response.json["params"]["iterations"] == 3


def test_a_params_file_that_is_not_text_or_too_large_or_twice_is_a_4xx(
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    counts: Callable[[], Any],
) -> None:
    before = counts()
    binary = post_parts(
        http, auth, {**images(image_bytes), "params": (io.BytesIO(b"\xff\xfe\x00{"), "p.json")}
    )
    assert binary.status_code == 400
    assert binary.json["error"]["code"] == "invalid_params"
    assert binary.json["error"]["message"].startswith("params: the file is not UTF-8 text")
    huge = post_parts(
        http, auth, {**images(image_bytes), "params": (io.BytesIO(b" " * 70_000), "p.json")}
    )
    assert huge.status_code == 413
    assert huge.json["error"]["code"] == "params_too_large"
    both = post_parts(
        http,
        auth,
        {
            **images(image_bytes),
            "params": [json.dumps(TINY), (io.BytesIO(json.dumps(TINY).encode()), "p.json")],
        },
    )
    assert both.status_code == 400
    assert both.json["error"]["message"] == "params: send one params field"
    assert counts() == before


def test_an_image_sent_as_a_text_field_is_a_400_saying_so(
    http: FlaskClient, auth: dict[str, str], image_bytes: Callable[[str], bytes]
) -> None:
    parts = {**images(image_bytes), "content": "tubingen.png", "params": json.dumps(TINY)}
    response = post_parts(http, auth, parts)
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "image_not_a_file"
    assert error["details"]["field"] == "content"
    assert "send the image as a file" in error["message"]
