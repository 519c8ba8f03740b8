"""Files named by the attempt that wrote them: only the one the row names is served, a
commit by an attempt that lost its lease changes nothing, and jobs stored before the row
named its files keep their fixed names. The API on a real database; the worker's side
of it driven through ``shared.jobs`` as a worker would (the fault tests run real ones)."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.services import EXTENSION_KEY
from shared import jobs, leases
from shared.errors import LeaseLostError
from shared.models import Job, JobEvent
from shared.storage import (
    CHECKPOINT_FILE,
    RESULT_FILE,
    LocalStorage,
    checkpoint_file,
    preview_file,
    result_file,
)


def _claim(app: Flask, job_id: str, worker: str = "w") -> jobs.Claim:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        claim = jobs.claim_job(session, uuid.UUID(job_id), worker=worker, lease_seconds=30.0)
    assert claim is not None
    return claim


def _storage(app: Flask) -> LocalStorage:
    storage: LocalStorage = app.extensions[EXTENSION_KEY].storage
    return storage


def test_the_result_served_is_the_one_the_row_names(submit, http: FlaskClient, auth, app: Flask):
    job = submit().json
    claim = _claim(app, job["id"])
    storage = _storage(app)
    storage.put(claim.job_id, result_file(1), b"\x89PNG attempt 1")
    storage.put(claim.job_id, result_file(2), b"\x89PNG a stray attempt")  # named by nobody
    with app.extensions[EXTENSION_KEY].db.session() as session:
        jobs.finish_job(session, claim, result_file=result_file(1))
    response = http.get(job["urls"]["result"], headers=auth)
    assert response.status_code == 200 and response.data == b"\x89PNG attempt 1"
    assert response.mimetype == "image/png"


def test_a_job_stored_before_the_row_named_its_result_serves_the_fixed_name(
    submit, http: FlaskClient, auth, app: Flask
):
    job = submit().json
    claim = _claim(app, job["id"])
    _storage(app).put(claim.job_id, RESULT_FILE, b"\x89PNG old")
    with app.extensions[EXTENSION_KEY].db.session() as session:
        jobs.finish_job(session, claim)  # as the workers before did: no name
    response = http.get(job["urls"]["result"], headers=auth)
    assert response.status_code == 200 and response.data == b"\x89PNG old"


def test_an_attempt_that_lost_its_lease_commits_nothing(submit, http: FlaskClient, auth, app):
    job = submit().json
    old = _claim(app, job["id"], "old")
    db = app.extensions[EXTENSION_KEY].db
    with db.session() as session:
        session.query(Job).filter(Job.id == old.job_id).update({"lease_expires_at": Job.created_at})
        session.commit()
    new = _claim(app, job["id"], "new")
    assert new.attempt == 2
    storage = _storage(app)
    storage.put(new.job_id, preview_file(2, 5), b"\x89PNG new preview")
    with db.session() as session:
        leases.record_preview(session, new, name=preview_file(2, 5))
        leases.record_checkpoint(session, new, iteration=5, name=checkpoint_file(2, 5))
        for commit in (
            lambda: leases.record_preview(session, old, name=preview_file(1, 9)),
            lambda: leases.record_checkpoint(session, old, iteration=9, name=checkpoint_file(1, 9)),
            lambda: jobs.finish_job(session, old, result_file=result_file(1)),
        ):
            with pytest.raises(LeaseLostError):
                commit()
        row = session.get(Job, new.job_id)
        assert row is not None
        assert (row.preview_file, row.checkpoint_file, row.result_file) == (
            preview_file(2, 5),
            checkpoint_file(2, 5),
            None,
        )
        events = session.query(JobEvent).filter(JobEvent.job_id == new.job_id).all()
        assert [(e.kind, e.attempt) for e in events if e.kind == "checkpoint"] == [
            ("checkpoint", 2)
        ]
    response = http.get(job["urls"]["preview"], headers=auth)
    assert response.status_code == 200 and response.data == b"\x89PNG new preview"
    with db.session() as session:
        jobs.cancel_job(session, new.job_id, client_id=None)
        jobs.cancel_running_job(session, new, iteration=6)
        row = session.get(Job, new.job_id)
        assert row is not None and row.checkpoint_file is None, "a finished job is never resumed"
    assert http.get(job["urls"]["result"], headers=auth).status_code == 409


def test_fenced_names_are_job_file_names_and_others_are_not(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4()
    for name in (result_file(3), checkpoint_file(2, 140), preview_file(1, 7)):
        storage.put(job_id, name, b"x", durable=False)
        assert storage.get(job_id, name) == b"x"
    for bad in ("result.a1.png/../x", "checkpoint.a1.bin", "result.a.png", "preview.a1.i2.bin"):
        with pytest.raises(ValueError):
            storage.path(job_id, bad)
    storage.put(job_id, CHECKPOINT_FILE, b"old", durable=False)
    storage.delete_checkpoints(job_id)
    left = sorted(p.name for p in storage.job_dir(job_id).iterdir())
    assert left == [preview_file(1, 7), result_file(3)]
