"""Alembic migrations: the only way the schema changes.

``upgrade(url)`` is what ``stylequeue db upgrade`` runs; it finds the scripts
through this package, so it works from any directory. ``alembic.ini`` next to
this file serves the ``alembic`` command line (``alembic -c migrations/alembic.ini``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db import normalize_database_url

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # Stored as an attribute, not an option: ConfigParser would mangle '%' in passwords.
    config.attributes["database_url"] = normalize_database_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision`` (building it from empty)."""
    command.upgrade(alembic_config(database_url), revision)


def current_heads() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory(str(SCRIPT_LOCATION)).get_heads())
