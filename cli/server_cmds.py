"""Placeholder: commands are added by the module's owner."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's commands to the ``stylequeue`` group."""
