"""The whole service as separate real processes, and the faults the chaos test injects.

A Redis of the test's own (killed, restarted and flushed), the real API
(``stylequeue api``: gunicorn, killed with SIGKILL and started again), real
``celery worker`` process groups (SIGKILLed whole or just their pool process,
paused with SIGSTOP past the lease then continued, or a pool process that stops
itself just before one of its writes, through the workers' fault hook, and is
continued past the lease) and a real ``stylequeue
scheduler`` (the reconciler). A whole worker that was killed is replaced, as a
supervisor would. A fault on a worker picks, with a number the test drew from its
seed, among the workers busy with a job (the admin API's worker list tells
which), or among all the live ones when none is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from api_process import ApiProcess
from fault_helpers import WorkerProcess
from processes import free_port, stop_process_group
from test_fault_redis import RedisServer

from cli.server_cmds import scheduler_argv
from shared.settings import Settings
from worker.fault_hooks import PAUSE_FILE_VARIABLE

SCHEDULER_READY_MARKERS = ("beat: Starting", "ready.")
READY_SECONDS = 90.0
STALL_WAIT_SECONDS = 10.0  # how long a stall at a write waits for a pool process to get there


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` in /proc ("T": stopped), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a worker's pool process), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, not ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


@dataclass
class FaultRecord:
    at: float  # seconds since the chaos began
    kind: str
    target: str
    note: str = ""

    def line(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"  {self.at:6.1f} s  {self.kind:<12} {self.target}{note}"


class ChaosStack:
    """Every process of the service, started for one test; ``close()`` stops them all."""

    def __init__(self, env: dict[str, str], root: Path, *, workers: int) -> None:
        self.env = env
        self.root = root
        self.settings = Settings.from_env(env)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.workers: list[WorkerProcess] = []
        self.paused: set[int] = set()  # main pids of workers stopped with SIGSTOP
        # Pool processes that stopped themselves before a write (the pause file asked),
        # by pid: their worker's main pid.
        self.stalled: dict[int, int] = {}
        self.pause_file = Path(env[PAUSE_FILE_VARIABLE])
        self.pause_file.write_text("")
        self.restarts: list[threading.Thread] = []
        self.errors: list[str] = []  # what went wrong in the helpers' own threads
        self.faults: list[FaultRecord] = []
        self._started = 0
        self._api_restarting = False
        self.admin_key = ""
        self.t0 = time.monotonic()
        self.redis = RedisServer(root)
        self.env["STYLEQUEUE_REDIS_URL"] = self.redis.url
        self.scheduler_log = root / "scheduler.log"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.api = ApiProcess(self.env, free_port(), root / "api.log")
        try:
            self._start(workers)
        except BaseException:
            self.close()
            raise

    def _start(self, workers: int) -> None:
        with self.scheduler_log.open("wb") as log:
            self.scheduler = subprocess.Popen(
                scheduler_argv(self.settings),
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.api.start()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _: self._add_worker(), range(workers)))
        self.api.wait_ready()
        deadline = time.monotonic() + READY_SECONDS
        while not all(m in self.scheduler_log_text() for m in SCHEDULER_READY_MARKERS):
            assert self.scheduler.poll() is None, f"the scheduler exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"the scheduler was not ready:\n{self.logs()}"
            time.sleep(0.1)

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _add_worker(self) -> None:
        """Start one more worker and wait until it is ready (VGG19 loaded)."""
        with self.lock:
            name = f"w{self._started}"
            self._started += 1
        worker = WorkerProcess(self.env, self.root / f"{name}.log", name)
        with self.lock:
            self.workers.append(worker)

    # ------------------------------------------------------------ choosing a target

    def _busy_pool_pids(self) -> set[int]:
        """Pool processes running a job now, as the admin API shows them (empty if it is down)."""
        try:
            response = httpx.get(
                f"{self.base_url}/v1/admin/workers",
                headers={"Authorization": f"Bearer {self.admin_key}"},
                timeout=3.0,
            )
        except httpx.TransportError:
            return set()
        if response.status_code != 200:
            return set()
        return {
            int(w["pid"]) for w in response.json()["workers"] if w.get("current_job_id") is not None
        }

    def _pick_worker(self, pick: float, *, running: bool = True) -> WorkerProcess | None:
        """A live worker, preferably one whose pool process runs a job; ``pick`` in [0, 1)."""
        with self.lock:
            live = [w for w in self.workers if w.process.poll() is None]
            if running:
                stopped = self.paused | set(self.stalled.values())
                live = [w for w in live if w.process.pid not in stopped]
        if not live:
            return None
        busy_pids = self._busy_pool_pids()
        busy = [w for w in live if busy_pids & set(children(w.process.pid))]
        choices = busy or live
        return choices[int(pick * len(choices))]

    # ------------------------------------------------------------ faults

    def record(self, kind: str, target: str, note: str = "") -> None:
        self.faults.append(FaultRecord(self.now(), kind, target, note))

    def kill_worker(self, pick: float) -> None:
        """SIGKILL a whole worker (main and pool process); a replacement starts at once."""
        worker = self._pick_worker(pick, running=False)
        if worker is None:
            self.record("worker_kill", "-", "no live worker")
            return
        worker.kill(signal.SIGKILL)
        with self.lock:
            self.workers.remove(worker)
            self.paused.discard(worker.process.pid)
        self.record("worker_kill", worker.name)
        self._replace()

    def _replace(self) -> None:
        def start() -> None:
            try:
                self._add_worker()
            except BaseException as exc:
                self.errors.append(f"a replacement worker did not start: {exc}")

        thread = threading.Thread(target=start, name="worker-restart", daemon=True)
        thread.start()
        self.restarts.append(thread)

    def kill_pool_process(self, pick: float) -> None:
        """SIGKILL a worker's pool process alone: its main process starts another."""
        worker = self._pick_worker(pick)
        pids = children(worker.process.pid) if worker is not None else []
        if worker is None or not pids:
            self.record("pool_kill", "-", "no pool process up")
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.record("pool_kill", f"{worker.name} pool {pids}")

    def pause_worker(self, pick: float, seconds: float) -> Callable[[], None] | None:
        """SIGSTOP a whole worker; returns what continues it (SIGCONT) ``seconds`` later."""
        worker = self._pick_worker(pick)
        if worker is None:
            self.record("pause", "-", "no running worker")
            return None
        pid = worker.process.pid
        os.killpg(pid, signal.SIGSTOP)
        with self.lock:
            self.paused.add(pid)
        self.record("pause", worker.name, f"{seconds:.1f} s")

        def resume() -> None:
            try:
                os.killpg(pid, signal.SIGCONT)
                note = ""
            except ProcessLookupError:
                note = "killed meanwhile"
            with self.lock:
                self.paused.discard(pid)
            self.record("continue", worker.name, note)

        return resume

    def kill_redis(self, seconds: float) -> Callable[[], None] | None:
        """SIGKILL Redis (everything in it lost); returns what starts it again."""
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.record("redis_kill", "redis", "already down")
            return None
        self.redis.kill()
        self.record("redis_kill", "redis", f"down {seconds:.1f} s")

        def restart() -> None:
            self.redis.start()
            self.record("redis_start", "redis")

        return restart

    def flush_redis(self) -> None:
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.record("redis_flush", "redis", "down")
            return
        self.redis.client.flushall()
        self.record("redis_flush", "redis")

    def kill_api(self) -> None:
        """SIGKILL the API's whole process group and start it again at once."""
        if self._api_restarting:
            self.record("api_kill", "api", "still restarting")
            return
        self._api_restarting = True
        self.api.signal(signal.SIGKILL, group=True)
        self.api.wait_exit()
        self.record("api_kill", "api")

        def restart() -> None:
            try:
                self.api.start()
                seconds = self.api.wait_ready()
                self.record("api_ready", "api", f"{seconds:.1f} s after the start")
            except BaseException as exc:
                self.errors.append(f"the API did not come back: {exc}")
            finally:
                self._api_restarting = False

        thread = threading.Thread(target=restart, name="api-restart", daemon=True)
        thread.start()
        self.restarts.append(thread)

    def stall_at_write(self, kind: str, seconds: float) -> None:
        """A pool process stopped (SIGSTOP, by its own hand) just before its next ``kind``
        write (result, checkpoint or preview) of a first attempt, and continued
        ``seconds`` later: the write comes after the lease ran out.

        The pause file asks every pool process; the test clears it as soon as one
        has stopped, then continues every one that did.
        """
        with self.lock:
            if self.pause_file.read_text():
                self.record("stall", "-", "a stall is already waiting for a write")
                return
            self.pause_file.write_text(kind)

        def stall() -> None:
            deadline = time.monotonic() + STALL_WAIT_SECONDS
            try:
                while time.monotonic() < deadline and not self._self_stopped():
                    time.sleep(0.02)
            finally:
                self.pause_file.write_text("")
            time.sleep(0.3)  # one that read the file just before it was cleared
            stopped = self._self_stopped()
            if not stopped:
                self.record("stall", "-", f"no {kind} write came in {STALL_WAIT_SECONDS:g} s")
                return
            with self.lock:
                self.stalled.update(stopped)
            names = self._names(stopped)
            self.record("stall", names, f"before its {kind} write, {seconds:.1f} s")
            time.sleep(seconds)
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                with self.lock:
                    self.stalled.pop(pid, None)
            self.record("continue", names)

        thread = threading.Thread(target=stall, name="stall", daemon=True)
        thread.start()
        self.restarts.append(thread)

    def _self_stopped(self) -> dict[int, int]:
        """Pool processes newly stopped while their worker is not (so by the pause file)."""
        with self.lock:
            workers = [w for w in self.workers if w.process.pid not in self.paused]
            known = set(self.stalled)
        return {
            pid: worker.process.pid
            for worker in workers
            if process_state(worker.process.pid) not in ("T", None)
            for pid in children(worker.process.pid)
            if pid not in known and process_state(pid) == "T"
        }

    def _names(self, stopped: dict[int, int]) -> str:
        by_pid = {w.process.pid: w.name for w in self.workers}
        return ", ".join(f"{by_pid.get(main, '?')} pool {pid}" for pid, main in stopped.items())

    def wait_restarts(self) -> None:
        for thread in self.restarts:
            thread.join(timeout=READY_SECONDS + 30)

    # ------------------------------------------------------------ logs and teardown

    def scheduler_log_text(self) -> str:
        try:
            return self.scheduler_log.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self, tail: int = 3000) -> str:
        parts = [f"--- worker {w.name}\n{w.log()[-tail:]}" for w in self.workers]
        parts.append(f"--- scheduler\n{self.scheduler_log_text()[-tail:]}")
        parts.append(f"--- api\n{self.api.log()[-tail:]}")
        return "\n".join(parts)

    def log_lines_about(self, job_id: str, limit: int = 40) -> str:
        """The worker logs' lines that name ``job_id`` (the replaced workers' too), by time."""
        lines = []
        for path in sorted(self.root.glob("w*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if job_id in line:
                    lines.append((line[:23], f"    {path.stem}: {line[:300]}"))
        return "\n".join(text for _, text in sorted(lines)[-limit:])

    def close(self) -> None:
        for thread in self.restarts:
            thread.join(timeout=READY_SECONDS + 30)
        with self.lock:
            workers = list(self.workers)
            paused = set(self.paused)
            stalled = list(self.stalled)
        for pid in stalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for worker in workers:
            if worker.process.pid in paused:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGCONT)
            worker.stop()
        if self.scheduler is not None:
            stop_process_group(self.scheduler)
        self.api.stop()
        self.redis.stop()
