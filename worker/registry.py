"""This worker process in the ``workers`` registry: registration, a beating thread, its jobs.

Best effort throughout: a database hiccup costs a beat or a counter, never a job.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable

import torch
from sqlalchemy.orm import Session

from shared import workers
from shared.db import Database
from shared.models import utcnow
from shared.workers import DeviceInfo

log = logging.getLogger(__name__)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def memory_used(device: torch.device) -> int | None:
    """The GPU memory this process holds (PyTorch's reserved pool), or None off a GPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_reserved(device))


def describe_device(device: torch.device) -> DeviceInfo:
    """``cpu``, or ``cuda:N`` with the GPU's name and total memory."""
    if device.type != "cuda":
        return DeviceInfo(str(device))
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    return DeviceInfo(f"cuda:{index}", properties.name, int(properties.total_memory))


class WorkerRegistry:
    """Registers the worker on ``start`` (idempotent) and beats every ``beat_seconds``.

    The row's key is ``name``, the worker's Celery node name, which its claims
    carry too; ``hostname`` and ``pid`` are this pool process's. A pool process
    restarted under the same name takes the row over. Two live processes under
    one name (a misconfiguration: two workers given the same ``--name``) are
    noticed at registration and on a beat, and logged as a warning once.
    """

    def __init__(
        self,
        db: Database,
        *,
        name: str,
        hostname: str,
        pid: int,
        device: Callable[[], torch.device],
        beat_seconds: float = workers.BEAT_SECONDS,
        memory_budget: Callable[[], int | None] | None = None,
    ) -> None:
        self._db = db
        self._hostname = hostname
        self._pid = pid
        self.name = name
        self._device = device
        self._memory_budget = memory_budget  # registered: the largest job it claims
        self._beat_seconds = beat_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def start(self) -> None:
        """Register (once) and start the beating thread."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._best_effort("register", self._register)
            self._thread = threading.Thread(
                target=self._beat_forever, name="stylequeue-worker-beat", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5)

    def job_started(self, job_id: uuid.UUID) -> None:
        self.start()
        self._best_effort("job start", lambda s: workers.job_started(s, self.name, job_id))

    def job_ended(self, *, succeeded: bool, failed: bool) -> None:
        self._best_effort(
            "job end",
            lambda s: workers.job_ended(s, self.name, succeeded=succeeded, failed=failed),
        )

    def _register(self, session: Session) -> None:
        self._warn_if_held_by_another(workers.holder_of(session, self.name))
        workers.register_worker(
            session,
            name=self.name,
            hostname=self._hostname,
            pid=self._pid,
            device=describe_device(self._device()),
            memory_budget_bytes=self._memory_budget() if self._memory_budget else None,
        )

    def _beat_forever(self) -> None:
        while not self._stop.wait(self._beat_seconds):
            self._best_effort("beat", self._beat)

    def _beat(self, session: Session) -> None:
        used = memory_used(self._device())
        if workers.beat(
            session, self.name, hostname=self._hostname, pid=self._pid, memory_used_bytes=used
        ):
            return
        holder = workers.holder_of(session, self.name)
        if holder is None:  # the row went away: register again
            self._register(session)
        else:  # another process registered under this name since: leave it its row
            self._warn_if_held_by_another(holder)

    def _warn_if_held_by_another(self, holder: workers.Holder | None) -> None:
        """A warning, once, when another live process holds this worker's row.

        Not for this worker's own pool process that died and was replaced (its
        pid is gone, or its row stopped beating).
        """
        if (
            holder is None
            or self._warned
            or (holder.hostname, holder.pid)
            == (
                self._hostname,
                self._pid,
            )
        ):
            return
        age = (utcnow() - holder.last_heartbeat_at).total_seconds()
        if age >= workers.ALIVE_SECONDS:
            return
        if holder.hostname == self._hostname and not _process_exists(holder.pid):
            return
        self._warned = True
        log.warning(
            "another live process already runs as worker %s (pid %d on %s): give each "
            "worker a --name of its own; jobs stay safe, but the workers page, the logs "
            "and Flower mix the two up",
            self.name,
            holder.pid,
            holder.hostname,
            extra={"event": "duplicate_worker_name", "worker": self.name},
        )

    def _best_effort(self, what: str, write: Callable[[Session], object]) -> bool:
        try:
            with self._db.session() as session:
                write(session)
            return True
        except Exception:
            log.warning("worker registry: could not record the %s", what, exc_info=True)
            return False
