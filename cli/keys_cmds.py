"""Operator commands for API clients: keys create, update and list, with each client's limits.

A limit given as a number is the client's own (0: no limit for it); ``default``
puts it back to the service's (``STYLEQUEUE_RATE_LIMIT`` and the others).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from cli.server_cmds import WHERE_IT_GOES, _check_database, _database_errors, _settings, _ShowsWhere

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.models import ApiClient

DEFAULT_WORD = "default"
# Option name, column, and the type of its number.
LIMIT_OPTIONS: tuple[tuple[str, str, type[int] | type[float]], ...] = (
    ("rate", "rate_limit", float),
    ("burst", "rate_burst", int),
    ("max_queued", "max_queued", int),
    ("max_running", "max_running", int),
)


class _Limit(click.ParamType):
    """A number, 0 or more, or ``default`` (the service's value: the column left null)."""

    def __init__(self, kind: type[int] | type[float]) -> None:
        self.kind = kind
        self.name = "integer" if kind is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == DEFAULT_WORD:
            return DEFAULT_WORD
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a {self.name} (or {DEFAULT_WORD!r})", param, ctx)
        if not number >= 0 or number == float("inf"):
            self.fail(f"{value!r} must be 0 or more (0: no limit)", param, ctx)
        return number


def _weight(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0 < value < float("inf"):
        raise click.BadParameter("must be a positive number")
    return value


def limit_options(command: Any) -> Any:
    """The options that set a client's limits and weight, shared by create and update."""
    for flag, help_text in reversed(
        (
            ("--weight", "Its share of the workers when they are scarce (default 1)."),
            ("--max-running", "At most this many of its jobs running at once."),
            ("--max-queued", "At most this many of its jobs waiting for a worker."),
            ("--burst", "Submits it may make at once (the rate's bucket)."),
            ("--rate", "Submits per second, sustained (after the burst)."),
        )
    ):
        if flag == "--weight":
            option = click.option(flag, type=float, callback=_weight, help=help_text)
        else:
            kind = float if flag == "--rate" else int
            option = click.option(
                flag,
                type=_Limit(kind),
                help=f"{help_text} 0: no limit; '{DEFAULT_WORD}': the service's.",
            )
        command = option(command)
    return command


@click.group()
def keys() -> None:
    """API key commands: create, update, list (with each client's limits), rotate-webhook-secret."""


@contextmanager
def _session() -> Iterator[Session]:
    from shared.db import Database

    settings = _settings()
    _check_database(settings)
    database = Database(settings.database_url)
    try:
        with _database_errors(settings), database.session() as session:
            yield session
    finally:
        database.dispose()


def _apply(client: ApiClient, values: dict[str, Any]) -> None:
    for option, column, _kind in LIMIT_OPTIONS:
        value = values.get(option)
        if value is not None:
            setattr(client, column, None if value == DEFAULT_WORD else value)
    if values.get("weight") is not None:
        client.weight = values["weight"]


@keys.command("create", cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.argument("name")
@click.option("--admin", is_flag=True, help="The key may use the admin endpoints.")
@limit_options
def keys_create(name: str, admin: bool, **limits: Any) -> None:
    """Create an API client NAME and print its webhook signing secret, then its new key
    (alone, on the last line).

    Run it with the settings of the stack (from the directory of `stylequeue up`, or
    with the same STYLEQUEUE_DATA_DIR / STYLEQUEUE_DATABASE_URL): the client is made in
    that database. A limit left out is the service's default.
    """
    from shared.auth import create_client

    try:
        with _session() as session:
            client, key = create_client(session, name, is_admin=admin)
            secret = client.webhook_secret
            if any(value is not None for value in limits.values()):
                _apply(client, limits)
                session.commit()
            shown = (
                f"created {'admin client' if admin else 'client'} {client.name!r} (id {client.id})"
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{shown}; its webhook signing secret, shown only now:")
    click.echo(secret)
    click.echo("its key, shown only now:")
    click.echo(key)


@keys.command("rotate-webhook-secret", cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.argument("name")
def keys_rotate_webhook_secret(name: str) -> None:
    """Give client NAME (or the client with id NAME) a new webhook signing secret and print it
    (alone, on the last line; shown only now).

    Every webhook sent from now on, retries of earlier ones included, is signed with the
    new secret; the old one signs nothing more. A client created before webhooks existed
    has no secret until this is run.
    """
    from shared.webhooks import new_secret

    with _session() as session:
        client = _find(session, name)
        client.webhook_secret = new_secret()
        session.commit()
        secret = client.webhook_secret
        click.echo(f"client {client.name!r} (id {client.id}): its new webhook signing secret:")
    click.echo(secret)


@keys.command("update", cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.argument("name")
@limit_options
def keys_update(name: str, **limits: Any) -> None:
    """Change the limits or weight of client NAME (or of the client with id NAME).

    Only the options given change. The API processes apply it within a few seconds.
    """
    if all(value is None for value in limits.values()):
        raise click.UsageError(
            "give at least one of --rate, --burst, --max-queued, --max-running, --weight"
        )
    with _session() as session:
        client = _find(session, name)
        _apply(client, limits)
        session.commit()
        click.echo(_describe(client))


@keys.command("list", cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per client, in a list.")
def keys_list(as_json: bool) -> None:
    """Every API client: id, name, admin or not, and its limits ('default': the service's)."""
    from sqlalchemy import select

    from shared.models import ApiClient

    with _session() as session:
        clients = list(session.scalars(select(ApiClient).order_by(ApiClient.id)))
        if as_json:
            click.echo(json.dumps([_as_dict(c) for c in clients], indent=2))
            return
        for client in clients:
            click.echo(_describe(client))


def _find(session: Session, name: str) -> ApiClient:
    from sqlalchemy import select

    from shared.models import ApiClient

    found = list(session.scalars(select(ApiClient).where(ApiClient.name == name)))
    if not found and name.isdigit():
        by_id = session.get(ApiClient, int(name))
        found = [by_id] if by_id is not None else []
    if not found:
        raise click.ClickException(f"no client named {name!r} (`stylequeue keys list`)")
    if len(found) > 1:
        ids = ", ".join(str(c.id) for c in found)
        raise click.ClickException(
            f"{len(found)} clients are named {name!r} (ids {ids}); give its id"
        )
    return found[0]


def _as_dict(client: ApiClient) -> dict[str, Any]:
    return {
        "id": client.id,
        "name": client.name,
        "admin": client.is_admin,
        "created_at": client.created_at.isoformat(),
        "rate": client.rate_limit,
        "burst": client.rate_burst,
        "max_queued": client.max_queued,
        "max_running": client.max_running,
        "weight": client.weight,
    }


def _describe(client: ApiClient) -> str:
    def shown(value: float | int | None) -> str:
        return DEFAULT_WORD if value is None else f"{value:g}"

    limits = " ".join(
        f"{option.replace('_', '-')}={shown(getattr(client, column))}"
        for option, column, _kind in LIMIT_OPTIONS
    )
    admin = " admin" if client.is_admin else ""
    return f"{client.id}\t{client.name}{admin}\t{limits} weight={client.weight:g}"


def register(group: click.Group) -> None:
    """Add this module's commands to the ``stylequeue`` group."""
    group.add_command(keys)
