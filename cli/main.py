"""The ``stylequeue`` entry point: one click group, each concern's commands in its own module."""

from __future__ import annotations

import click

from cli import client_cmds, engine_cmds, keys_cmds, params, server_cmds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stylequeue")
def cli() -> None:
    """stylequeue: neural style transfer as asynchronous jobs."""


for _module in (engine_cmds, server_cmds, keys_cmds, client_cmds, params):
    _module.register(cli)


def main() -> None:
    cli()
