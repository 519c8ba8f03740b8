"""Every PostgreSQL connection of stylequeue (the sessions' pool and the API's per-thread
connections) sets the server's TCP timeouts for itself, so that a client that vanished
in the middle of a transaction stops holding its rows within seconds
(``tests/service/test_fault_hosts.py`` cuts a host's link to show it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from shared.db import SERVER_TCP_SETTINGS, Database

# As the server shows each one.
SHOWN = {
    "tcp_user_timeout": "16000",  # milliseconds
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


@pytest.fixture
def db(postgresql_url: str) -> Iterator[Database]:
    assert "127.0.0.1" in postgresql_url, "over TCP: on a unix socket the server ignores them"
    database = Database(postgresql_url)
    yield database
    database.dispose()


def test_the_settings_are_the_ones_shown() -> None:
    assert set(SERVER_TCP_SETTINGS) == set(SHOWN)


def test_a_session_connection_sets_them(db: Database) -> None:
    with db.session() as session:
        shown = {name: session.execute(text(f"SHOW {name}")).scalar() for name in SHOWN}
    assert shown == SHOWN
    with (
        db.read_sessions() as session
    ):  # autocommit: the settings are the session's, not a transaction's
        assert session.execute(text("SHOW tcp_user_timeout")).scalar() == "16000"


def test_a_per_thread_connection_sets_them(db: Database) -> None:
    connections = db.thread_connections
    assert connections is not None
    for name, value in SHOWN.items():
        assert connections.fetch_one(f"SHOW {name}", ()) == (value,)
