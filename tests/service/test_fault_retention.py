"""Faults: the reconciler removes the files of jobs finished longer ago than
STYLEQUEUE_RETENTION_SECONDS; the job row keeps its history, and the result is a clear 404."""

from __future__ import annotations

import uuid
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.services import EXTENSION_KEY
from shared.celery_app import RECONCILE_TASK, create_celery
from shared.models import Job, JobEvent, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import CONTENT_FILE, PREVIEW_FILE, RESULT_FILE, style_file
from worker import tasks


def test_the_reconciler_removes_expired_files_and_keeps_the_history(
    submit, http: FlaskClient, auth: dict[str, str], app: Flask, settings: Settings
) -> None:
    services = app.extensions[EXTENSION_KEY]
    storage = services.storage
    expired, recent, running = (uuid.UUID(submit().json["id"]) for _ in range(3))
    long_ago = utcnow() - timedelta(seconds=settings.retention_seconds + 60)
    with services.db.session() as session:
        for job_id, status, finished_at in (
            (expired, JobStatus.SUCCEEDED, long_ago),
            (recent, JobStatus.SUCCEEDED, utcnow()),
            (running, JobStatus.RUNNING, None),
        ):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=status, finished_at=finished_at, created_at=long_ago)
            )
            storage.put(job_id, RESULT_FILE, b"png", durable=False)
            storage.put(job_id, PREVIEW_FILE, b"png", durable=False)
        session.commit()
    assert http.get(f"/v1/jobs/{expired}/result", headers=auth).status_code == 200

    reconcile = create_celery(settings).tasks[RECONCILE_TASK]
    assert reconcile.name == tasks.reconcile.name
    reconcile.apply().get()
    reconcile.apply().get()  # a second pass finds nothing more to do

    for name in (CONTENT_FILE, style_file(0), PREVIEW_FILE, RESULT_FILE):
        assert not storage.exists(expired, name), f"{name} outlived the retention period"
        assert storage.exists(recent, name) and storage.exists(running, name)
    assert not storage.job_dir(expired).exists()

    answer = http.get(f"/v1/jobs/{expired}/result", headers=auth)
    assert answer.status_code == 404
    assert answer.json is not None and answer.json["error"]["code"] == "result_missing"
    job = http.get(f"/v1/jobs/{expired}", headers=auth)
    assert job.status_code == 200 and job.json is not None and job.json["status"] == "succeeded"
    with services.db.session() as session:
        kinds = list(
            session.scalars(
                select(JobEvent.kind).where(JobEvent.job_id == expired).order_by(JobEvent.id)
            )
        )
        others = session.scalars(
            select(JobEvent.kind).where(
                JobEvent.job_id.in_([recent, running]), JobEvent.kind == "files_deleted"
            )
        ).all()
    assert kinds[0] == "created" and kinds.count("files_deleted") == 1
    assert others == []


def test_retention_zero_keeps_files_forever() -> None:
    env = {"STYLEQUEUE_DATABASE_URL": "sqlite:///x", "STYLEQUEUE_RETENTION_SECONDS": "0"}
    assert Settings.from_env(env).retention_seconds == 0
    assert Settings.from_env({**env, "STYLEQUEUE_RETENTION_SECONDS": ""}).retention_seconds > 0
