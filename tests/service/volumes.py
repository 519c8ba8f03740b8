"""A small filesystem of the test's own, to make storage really full or read-only.

chmod stops no root process, so a tmpfs mounted for the test is the honest way
to get ENOSPC (``fill``) or EROFS (``remount(volume, "ro")``). Mounting needs
root and mount(8): skipped without them, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from processes import required


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted at ``mount_point`` (made if missing), unmounted after."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        required("a full or read-only data dir needs root and mount(8) to mount a tmpfs")
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        required(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        _run("umount", "-l", str(mount_point))


def fill(volume: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it."""
    filler = volume / "filler"
    chunk = b"\0" * 65536
    # Unbuffered: a buffered file would hold the chunk the disk refused and fail again
    # (ENOSPC) when closed, with the filler left behind.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def remount(volume: Path, mode: str) -> None:
    """Remount ``volume`` with ``mode`` (``ro`` or ``rw``)."""
    done = _run("mount", "-o", f"remount,{mode}", str(volume))
    assert done.returncode == 0, done.stderr
