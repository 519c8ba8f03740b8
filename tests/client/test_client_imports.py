"""The client is what a user installs to talk to a server: it must not pull the server in."""

from __future__ import annotations

import subprocess
import sys

SERVER_SIDE = ("torch", "torchvision", "flask", "sqlalchemy", "celery", "redis", "PIL")
OUR_SERVER_PACKAGES = ("shared", "api", "worker", "migrations")


def test_importing_the_client_loads_no_server_package() -> None:
    probe = (
        "import sys, client, client.text; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_SIDE + OUR_SERVER_PACKAGES!r})); "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"the client imported {done.stdout.strip()}"
