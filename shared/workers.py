"""The ``workers`` registry, written by each worker's pool process, and a worker's name.

A worker is one Celery node (``stylequeue worker --name``, by default
``default_worker_name``): that node name is its lease owner, the ``worker`` of
its jobs and their events, the key of its row here, and the name Flower and
``celery inspect`` show. Its pool process registers once its network is loaded
(or on its first job), then beats every ``BEAT_SECONDS`` from a background
thread; it records its current job on claim and counts its outcomes. Operators
read it through ``shared.admin_reads``: a worker is alive while its last beat is
under ``ALIVE_SECONDS`` old (three beats). Rows of dead workers are kept as
history; a pool process restarted under the same node name takes its row over
(the row's ``pid`` is then the new process's), so a node has one row. The
scheduler's node runs no job and registers nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import Worker, utcnow

BEAT_SECONDS = 5.0
ALIVE_SECONDS = 3 * BEAT_SECONDS
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def default_worker_name(
    hostname: str, pid: int, *, device: str, cuda_visible_devices: str | None
) -> str:
    """The node name of a worker not given ``--name``: unique per host and GPU.

    ``gpu<i>@<host>`` when CUDA_VISIBLE_DEVICES names one GPU by its index (as
    the image's ``stylequeue-gpu-worker`` sets it; ``gpu-<id>@<host>`` for one
    named by UUID or MIG id) and the device is not the CPU; ``cpu-<pid>@<host>``
    on the CPU (STYLEQUEUE_DEVICE=cpu); otherwise ``worker-<pid>@<host>``. The
    pid is that of the worker's main process: two workers on a host differ, and
    a whole worker started again is a new node.
    """
    devices = [d.strip() for d in (cuda_visible_devices or "").split(",") if d.strip()]
    if device != "cpu" and len(devices) == 1 and not devices[0].startswith("-"):
        gpu = devices[0]
        name = f"gpu{gpu}" if gpu.isdigit() else f"gpu-{_NOT_IN_A_NAME.sub('-', gpu)}"
        return f"{name}@{hostname}"
    return f"{'cpu' if device == 'cpu' else 'worker'}-{pid}@{hostname}"


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
    memory_budget_bytes: int | None = None,
) -> None:
    """Insert this worker's row, or start it afresh (counters at 0) when the name exists.

    ``memory_budget_bytes``: the most a job's memory estimate may be for it to claim the
    job (``shared.memory_estimate``); None: any."""
    now = now or utcnow()
    values = {
        "hostname": hostname,
        "pid": pid,
        "device": device.device,
        "device_name": device.name,
        "device_memory_bytes": device.memory_bytes,
        "memory_budget_bytes": memory_budget_bytes,
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


def beat(
    session: Session,
    name: str,
    *,
    hostname: str | None = None,
    pid: int | None = None,
    memory_used_bytes: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Renew the worker's heartbeat; False if it is not registered (with ``hostname`` and
    ``pid``: not by that process, e.g. another process registered under the same name).
    ``memory_used_bytes``: the GPU memory the process holds now, when it has a GPU."""
    conditions = [Worker.name == name]
    if hostname is not None:
        conditions.append(Worker.hostname == hostname)
    if pid is not None:
        conditions.append(Worker.pid == pid)
    values: dict[str, object] = {"last_heartbeat_at": now or utcnow()}
    if memory_used_bytes is not None:
        values["device_memory_used_bytes"] = memory_used_bytes
    result = session.execute(update(Worker).where(*conditions).values(**values))
    session.commit()
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class Holder:
    """The process a worker's row names now, and its last beat."""

    hostname: str
    pid: int
    last_heartbeat_at: datetime


def holder_of(session: Session, name: str) -> Holder | None:
    """Who holds the row of worker ``name`` (None: no such row)."""
    row = session.execute(
        select(Worker.hostname, Worker.pid, Worker.last_heartbeat_at).where(Worker.name == name)
    ).one_or_none()
    return None if row is None else Holder(row[0], row[1], row[2])


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
