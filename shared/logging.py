"""One log format for every stylequeue process (API, worker, scheduler, CLI)."""

from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
LOG_LEVEL_VARIABLE = "STYLEQUEUE_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "INFO"


def configure_logging(level: str | None = None) -> None:
    """Log to stderr at ``level`` (default: $STYLEQUEUE_LOG_LEVEL or INFO)."""
    chosen = (level or os.environ.get(LOG_LEVEL_VARIABLE) or DEFAULT_LOG_LEVEL).upper()
    logging.basicConfig(format=LOG_FORMAT, level=chosen)
