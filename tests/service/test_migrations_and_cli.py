"""Migrations build the schema the models describe; the operator commands work from any directory."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import func, inspect, select

import migrations
from cli.main import cli
from shared.auth import authenticate
from shared.db import Database
from shared.models import ApiClient, Base, Job, JobEvent, JobStatus, utcnow


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {i["name"] for i in inspect(connection).get_indexes("jobs")}
            assert {"ix_jobs_client_created", "ix_jobs_status_created"} <= indexes
    finally:
        database.dispose()


def test_downgrade_to_empty_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrations.upgrade(url)
    migrations.command.downgrade(migrations.alembic_config(url), "base")
    database = Database(url)
    try:
        assert set(inspect(database.engine).get_table_names()) == {"alembic_version"}
        migrations.upgrade(url)
        assert {"api_clients", "jobs", "job_events"} <= set(
            inspect(database.engine).get_table_names()
        )
    finally:
        database.dispose()


def test_every_row_survives_the_migrations_after_the_first_release(tmp_path: Path) -> None:
    """Down to 0005 and up again with a client, a job and its event in the tables: on
    SQLite a migration that rebuilds a table (a copy, then a drop of the old one) would
    cascade the drop into every job of the client, or every event of the job."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrations.upgrade(url)
    database = Database(url)
    try:
        with database.session() as session:
            client = ApiClient(name="kept", key_hash=uuid.uuid4().hex * 2)
            session.add(client)
            session.flush()
            job = Job(
                client_id=client.id,
                status=JobStatus.SUCCEEDED,
                params={},
                n_styles=1,
                iterations=2,
                created_at=utcnow(),
            )
            session.add(job)
            session.flush()
            session.add(JobEvent(job_id=job.id, kind="created", attempt=0, worker=None, data={}))
            session.commit()
        database.dispose()

        def counts() -> tuple[int, int, int]:
            with database.session() as session:
                return (
                    session.scalar(select(func.count()).select_from(ApiClient)) or 0,
                    session.scalar(select(func.count()).select_from(Job)) or 0,
                    session.scalar(select(func.count()).select_from(JobEvent)) or 0,
                )

        assert counts() == (1, 1, 1)
        migrations.command.downgrade(migrations.alembic_config(url), "0005_job_losses")
        database.dispose()
        with database.engine.connect() as connection:
            rows = [
                connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                for table in ("api_clients", "jobs", "job_events")
            ]
        assert rows == [1, 1, 1]
        database.dispose()
        migrations.upgrade(url)
        assert counts() == (1, 1, 1)
    finally:
        database.dispose()


def test_db_upgrade_and_keys_create_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the migration scripts are found through the package
    env = {"STYLEQUEUE_DATA_DIR": str(tmp_path / "var")}
    runner = CliRunner()
    upgraded = runner.invoke(cli, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    created = runner.invoke(cli, ["keys", "create", "alice", "--admin"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("sq_") and " " not in key
    database = Database(f"sqlite:///{(tmp_path / 'var' / 'stylequeue.sqlite3').resolve()}")
    try:
        with database.session() as session:
            principal = authenticate(session, key)
        assert principal.name == "alice" and principal.is_admin
    finally:
        database.dispose()


def test_a_malformed_setting_fails_the_command_naming_the_variable() -> None:
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"STYLEQUEUE_MAX_UPLOAD_BYTES": "lots"})
    assert result.exit_code != 0
    assert "STYLEQUEUE_MAX_UPLOAD_BYTES" in result.output
