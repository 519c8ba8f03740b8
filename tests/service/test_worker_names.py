"""One name per worker: each worker process is its own Celery node, and that node name is
what its jobs, their events, the workers registry and Celery's own remote control show.

Two real ``celery worker`` processes on one host (started as the fault tests start
them, ``--hostname <name>@%h``) and the ``stylequeue scheduler``, on one database and
one Redis key space.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fault_helpers import WorkerProcess
from lease_cluster import LeaseCluster, cluster_env, pool_pid, wait_for
from service_helpers import DATA
from sqlalchemy import select

from cli.server_cmds import SCHEDULER_NODE_NAME
from shared.models import JobStatus, Worker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()


@pytest.fixture
def cluster(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[LeaseCluster]:
    env = cluster_env(
        f"names-{uuid.uuid4().hex[:6]}",
        postgresql_url=postgresql_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        data_dir=tmp_path / "data",
    )
    running = LeaseCluster(env, tmp_path)
    try:
        yield running
    finally:
        running.close()


def pool_children(worker: WorkerProcess) -> set[int]:
    """The worker's pool processes now (children of any of its main process's threads)."""
    threads = Path(f"/proc/{worker.process.pid}/task").glob("*/children")
    return {int(pid) for children in threads for pid in children.read_text().split()}


def rows_of(cluster: LeaseCluster, name: str) -> list[Worker]:
    with cluster.db.session() as session:
        return list(session.scalars(select(Worker).where(Worker.name == name)))


def registered_pid(cluster: LeaseCluster, worker: WorkerProcess) -> int | None:
    """The pool process the worker's one row names, once that process is up."""
    rows = rows_of(cluster, worker.node_name)
    assert len(rows) <= 1
    if rows and rows[0].pid in pool_children(worker):
        return rows[0].pid
    return None


def test_each_worker_is_a_celery_node_of_its_own_and_keeps_one_row(
    cluster: LeaseCluster,
) -> None:
    a, b = cluster.start_workers("a", "b")
    host = socket.gethostname()
    assert (a.node_name, b.node_name) == (f"a@{host}", f"b@{host}")

    # Celery's remote control sees two nodes, not one: each answers a ping by its name.
    replies = cluster.celery.control.ping(timeout=3)
    nodes = [name for reply in replies for name in reply]
    assert a.node_name in nodes and b.node_name in nodes, nodes
    assert len(nodes) == len(set(nodes)), "no name answers twice"
    scheduler = SCHEDULER_NODE_NAME.replace("%h", host)
    assert scheduler in nodes, "the scheduler is a node of its own"
    for worker in (a, b):
        assert "DuplicateNodenameWarning" not in worker.log()

    # The compose file's healthcheck finds a node of this host by its name's @<host>.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    check = compose["services"]["worker"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    healthcheck = subprocess.run(
        [sys.executable, "-c", check[3]],
        env={**os.environ, **cluster.env},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert healthcheck.returncode == 0, healthcheck.stderr

    # The job's worker is the node that ran it, in the row, its claim and its events.
    job_id = cluster.submit(CONTENT, [STYLE], iterations=3)
    wait_for("the job to succeed", lambda: cluster.row(job_id).status is JobStatus.SUCCEEDED)
    row = cluster.row(job_id)
    [ran] = [w for w in (a, b) if w.node_name == row.worker]
    claim = cluster.claim(job_id, 1)
    assert claim is not None and claim.worker == ran.node_name
    assert pool_pid(claim) in pool_children(ran), "the claim names that node's pool process"
    assert {e.worker for e in cluster.events(job_id) if e.kind != "created"} == {ran.node_name}

    # One row per node, keyed by its name; the pid is its pool process's.
    pids = {
        w.node_name: wait_for("a registered pool process", lambda w=w: registered_pid(cluster, w))
        for w in (a, b)
    }
    assert pids[a.node_name] != pids[b.node_name]

    # The pool process dies and is restarted: the same row, now naming the new process.
    old = pids[a.node_name]
    os.kill(old, signal.SIGKILL)
    new = wait_for(
        "the restarted pool process in the row",
        lambda: (pid := registered_pid(cluster, a)) is not None and pid != old and pid,
    )
    assert new in pool_children(a) and old not in pool_children(a)
    assert len(rows_of(cluster, a.node_name)) == 1, "one row per node, after a restart too"
    with cluster.db.session() as session:
        by_pid = session.scalars(
            select(Worker.name).where(Worker.hostname == host, Worker.pid.in_([old, new]))
        ).all()
    assert by_pid == [a.node_name], "no row of its own for either pool process"

    # The scheduler (its solo pool never forks) registers no row: it is not a worker.
    with cluster.db.session() as session:
        ours = session.scalars(select(Worker).where(Worker.hostname == host)).all()
    for worker_row in ours:
        try:
            group = os.getpgid(worker_row.pid)
        except ProcessLookupError:
            continue  # a process of an earlier test, gone
        assert group != cluster.scheduler.pid, f"the scheduler registered as {worker_row.name}"
    assert not rows_of(cluster, scheduler)
