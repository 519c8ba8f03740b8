"""A fault test's hook into a real worker process: stop it just before one of its writes.

With ``STYLEQUEUE_FAULT_PAUSE_FILE`` set to a path, a pool process reads that file
before each write of a job's result, checkpoint or preview; when the file names
that kind of write (``result``, ``checkpoint`` or ``preview``, one or more,
separated by white space) and the write is the job's first attempt's, the process
stops itself with SIGSTOP, once per job and kind. The test then lets the lease run
out, lets another worker take the job over, and sends SIGCONT: the write happens
after the worker lost its lease, as it would after a long pause of the process
(a debugger, a frozen VM, a swap storm). Unset (as everywhere but the fault
tests), nothing is read and nothing stops.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_FILE_VARIABLE = "STYLEQUEUE_FAULT_PAUSE_FILE"
KINDS = ("result", "checkpoint", "preview")

_paused: set[tuple[uuid.UUID, str]] = set()


def pause_before_write(kind: str, job_id: uuid.UUID, attempt: int) -> None:
    """Stop this process (SIGSTOP) if the pause file asks for it before this write."""
    path = os.environ.get(PAUSE_FILE_VARIABLE)
    if not path or attempt != 1 or (job_id, kind) in _paused:
        return
    try:
        wanted = Path(path).read_text().split()
    except OSError:
        return
    if kind not in wanted:
        return
    _paused.add((job_id, kind))
    log.warning("job %s: pausing before its %s write (fault test)", job_id, kind)
    os.kill(os.getpid(), signal.SIGSTOP)
    log.warning("job %s: resumed before its %s write (fault test)", job_id, kind)
