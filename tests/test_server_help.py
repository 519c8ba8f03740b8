"""The operator commands' --help, as a newcomer reads it from some directory: where the
database and the job files go (the absolute data dir from here, the variables that move
it), that `up` runs in the foreground, and `db upgrade`'s option by its real name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STYLEQUEUE = str(Path(sys.executable).parent / "stylequeue")


def help_text(args: list[str], cwd: Path, **variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_")}
    env.update(variables)
    done = subprocess.run(
        [STYLEQUEUE, *args, "--help"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # unwrapped: click wraps at the terminal's width


@pytest.mark.parametrize("args", [["keys", "create"], ["up"], ["db", "upgrade"]])
def test_help_says_where_the_database_and_files_go(args: list[str], tmp_path: Path) -> None:
    text = help_text(args, tmp_path)
    for variable in ("STYLEQUEUE_DATA_DIR", "STYLEQUEUE_DATABASE_URL"):
        assert variable in text
    assert "job files" in text
    packed = text.replace(" ", "")  # click breaks long paths at their hyphens
    assert f"thedatadiris{tmp_path.resolve() / 'var'}," in packed
    assert f"thedatabase{tmp_path.resolve() / 'var' / 'stylequeue.sqlite3'}" in packed

    moved = help_text(args, tmp_path, STYLEQUEUE_DATABASE_URL="postgresql://u:pw@db.example/sq")
    assert "postgresql://u:***@db.example/sq" in moved and "pw@" not in moved


def test_up_help_says_it_runs_in_the_foreground(tmp_path: Path) -> None:
    text = help_text(["up"], tmp_path)
    assert "foreground" in text and "Ctrl-C" in text and "another terminal" in text


def test_db_upgrade_help_names_its_option_as_it_is(tmp_path: Path) -> None:
    text = help_text(["db", "upgrade"], tmp_path)
    assert "--revision" in text and "REVISION." not in text
