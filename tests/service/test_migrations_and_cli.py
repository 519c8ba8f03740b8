"""Migrations build the schema the models describe; the operator commands work from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect

import migrations
from cli.main import cli
from shared.auth import authenticate
from shared.db import Database
from shared.models import Base


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
