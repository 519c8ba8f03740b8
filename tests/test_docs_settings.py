"""docs/configuration.md lists every STYLEQUEUE_* variable the code reads, and no other.

Besides its own variables, the settings read only the standard AWS ones that the S3
store takes (``AWS_VARIABLES``); the page names each of them too.

Two ways to find what the code reads: ``Settings.from_env`` run against an
environment that records every lookup (its names are built from a prefix, so a
text search would miss them), and a search of the source for literal
``STYLEQUEUE_…`` names (the client, the container files, the test fixtures).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from shared.settings import AWS_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "configuration.md"
VARIABLE = re.compile(r"\bSTYLEQUEUE_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
TABLE_ROW = re.compile(r"^\|\s*`(STYLEQUEUE_[A-Z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|\s*$")
SOURCE_DIRS = (
    "api",
    "cli",
    "client",
    "migrations",
    "shared",
    "worker",
    "scripts",
    "bench",
    "tests",
)
SOURCE_FILES = ("Dockerfile", "docker-compose.yml", "pyproject.toml")
SOURCE_SUFFIXES = (".py", ".sh", ".ini", ".toml", ".yml")
SKIPPED_PARTS = {"__pycache__", "data"}  # tests/data: vendored, not ours


class RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_read_by_settings() -> set[str]:
    """The STYLEQUEUE_ variables ``Settings.from_env`` looks up (the AWS ones aside)."""
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    return environment.looked_up - set(AWS_VARIABLES)


def test_the_only_other_variables_read_are_the_aws_ones_and_they_are_documented() -> None:
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    assert environment.looked_up - variables_read_by_settings() == set(AWS_VARIABLES)
    page = TABLE.read_text()
    assert not [name for name in AWS_VARIABLES if f"`{name}`" not in page]


def source_files() -> Iterator[Path]:
    for name in SOURCE_FILES:
        yield ROOT / name
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if path.is_file() and _is_source(path):
                yield path


def _is_source(path: Path) -> bool:
    if SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
        return False
    return path.suffix in SOURCE_SUFFIXES or path.parent.name == "scripts"  # bash, no suffix


def variables_named_in_source() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in source_files():
        for name in VARIABLE.findall(path.read_text(errors="replace")):
            found.setdefault(name, path.relative_to(ROOT))
    return found


def documented_variables() -> dict[str, tuple[str, str]]:
    """variable -> (default, what it does), from the tables' rows."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = TABLE_ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def test_settings_reads_only_prefixed_variables() -> None:
    read = variables_read_by_settings()
    assert read, "the recording environment saw no lookups: the test would prove nothing"
    assert all(VARIABLE.fullmatch(name) for name in read), read


def test_every_variable_the_settings_read_is_documented() -> None:
    missing = variables_read_by_settings() - set(documented_variables())
    assert not missing, f"add to docs/configuration.md: {sorted(missing)}"


def test_every_variable_named_in_the_source_is_documented() -> None:
    documented = set(documented_variables())
    missing = {
        name: str(path)
        for name, path in variables_named_in_source().items()
        if name not in documented
    }
    assert not missing, f"add to docs/configuration.md: {missing}"


def test_the_table_lists_no_variable_that_nothing_reads() -> None:
    used = variables_read_by_settings() | set(variables_named_in_source())
    stale = set(documented_variables()) - used
    assert not stale, f"no code reads these; remove them from docs/configuration.md: {stale}"


def test_every_row_gives_a_default_and_a_description() -> None:
    for name, (default, description) in documented_variables().items():
        assert default and len(description) > 10, name


def test_the_documented_defaults_of_numbers_match_the_code() -> None:
    # A default changed in shared/settings.py must change in the table too.
    defaults = Settings(database_url="sqlite://")
    documented = documented_variables()
    for field, value in vars(defaults).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            default, _ = documented[f"STYLEQUEUE_{field.upper()}"]
            number = float(re.sub(r"[`,]", "", default).split()[0])
            assert number == value, (
                f"STYLEQUEUE_{field.upper()}: table says {default}, code {value}"
            )
