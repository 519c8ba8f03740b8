"""The ``workers`` registry, written by each worker process.

A worker registers once its network is loaded (or on its first job), then beats
every ``BEAT_SECONDS`` from a background thread; it records its current job on
claim and counts its outcomes. Operators read it through ``shared.admin_reads``: a
worker is alive while its last beat is under ``ALIVE_SECONDS`` old (three beats).
Rows of dead workers are kept as history; a restarted process with the same
hostname and pid takes its row over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import Worker, utcnow

BEAT_SECONDS = 5.0
ALIVE_SECONDS = 3 * BEAT_SECONDS


def worker_name(hostname: str, pid: int) -> str:
    """The one name of a worker process: ``<hostname>/<pid>``.

    The lease owner its claims record, the ``worker`` of a job and of its events,
    the key of its row here. A pool process names itself with it; its worker's
    main process, which knows only the pool process's pid, names it the same way
    to end the lease of one that died.
    """
    return f"{hostname}/{pid}"


@dataclass(frozen=True)
class DeviceInfo:
    """What a worker computes on: ``cpu`` or ``cuda:N`` with the GPU's name and memory."""

    device: str
    name: str | None = None
    memory_bytes: int | None = None


def register_worker(
    session: Session,
    *,
    name: str,
    hostname: str,
    pid: int,
    device: DeviceInfo,
    now: datetime | None = None,
) -> None:
    """Insert this worker's row, or start it afresh (counters at 0) when the name exists."""
    now = now or utcnow()
    values = {
        "hostname": hostname,
        "pid": pid,
        "device": device.device,
        "device_name": device.name,
        "device_memory_bytes": device.memory_bytes,
        "started_at": now,
        "last_heartbeat_at": now,
        "current_job_id": None,
        "jobs_done": 0,
        "jobs_failed": 0,
    }
    existing = session.scalars(select(Worker.name).where(Worker.name == name)).one_or_none()
    if existing is None:
        session.add(Worker(name=name, **values))
    else:
        session.execute(update(Worker).where(Worker.name == name).values(**values))
    session.commit()


def beat(session: Session, name: str, *, now: datetime | None = None) -> bool:
    """Renew the worker's heartbeat; False if it is not registered."""
    result = session.execute(
        update(Worker).where(Worker.name == name).values(last_heartbeat_at=now or utcnow())
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def job_started(session: Session, name: str, job_id: uuid.UUID) -> None:
    """The worker has claimed ``job_id`` and runs it now."""
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(current_job_id=job_id, last_heartbeat_at=utcnow())
    )
    session.commit()


def job_ended(session: Session, name: str, *, succeeded: bool, failed: bool) -> None:
    """The worker's current job is over; count it as done or failed (or neither:
    canceled, released, lease lost)."""
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(
            current_job_id=None,
            last_heartbeat_at=utcnow(),
            jobs_done=Worker.jobs_done + int(succeeded),
            jobs_failed=Worker.jobs_failed + int(failed),
        )
    )
    session.commit()
