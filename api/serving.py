"""How ``stylequeue api`` serves: gunicorn's settings and hooks (``gunicorn -c python:api.serving``).

The serving model: a gunicorn master and its worker processes (one per core),
each an asyncio event loop (gunicorn's ``asgi`` worker) that reads requests
whole and hands them to a few threads running the Flask app (``api.asgi``). A
slow client costs a socket and a buffer, never a thread; the limits below bound
how long it may take and how many connections a process holds. Each process
freezes what the app holds once it is loaded and collects its young objects less
often (``GC_THRESHOLDS``): the collector's pauses were the polls' slowest
percent (bench/README.md, "With the collector tuned").

The command line (``cli.server_cmds.api_argv``) adds the bind address, the number
of processes and threads, and the application; everything else that shapes the
serving model is here, so that ``stylequeue api``, ``stylequeue up``, the image and
the benchmarks run the same server.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import sys
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

worker_class = "api.serving.Worker"
# Per process: a connection beyond it is closed at once. Held event streams and waits
# (``api.live``) may take at most ``api.live.MAX_HELD`` of them, so that ordinary requests
# always find room.
worker_connections = 4000
HEAD_SECONDS = 10.0  # a new connection's first request head must be complete by then
keepalive = 5  # seconds an idle kept-alive connection stays open (and a next head may take)
# The same loop and parser wherever it runs, whether or not uvloop or gunicorn_h1c happen to
# be installed (with both, a quick benchmark here showed no gain in CPU per request).
asgi_loop = "asyncio"
http_parser = "python"

# Each process binds the port with its own socket (SO_REUSEPORT), and the kernel spreads
# new connections over them. With gunicorn's default (the master's one socket, shared),
# asyncio's accept loop takes every connection that is waiting at once: the first process
# to wake took all sixteen kept-alive connections of a load test, and the other sat idle
# (bench/README.md, "One socket per process"). `stylequeue api` checks first that no one
# holds the port (cli.server_cmds), since a second server would bind it too.
reuse_port = True

# The master's control socket (gunicornc) is one path per user by default, shared by
# every gunicorn that user runs; nothing here uses it.
control_socket_disable = True

# The collector's thresholds (Python's default: 700, 10, 10): a request allocates a few
# thousand objects, so the default collects the young generation every few requests.
GC_THRESHOLDS = (20_000, 20, 100)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process the moment ``parent_pid`` (its parent) dies.

    A worker whose master was killed would otherwise keep its listening socket
    open and go on serving the connections it holds until gunicorn's own check
    (once a second) and its graceful timeout let it go: the port stays taken, so
    a new server cannot start, and new connections the kernel hands that socket
    wait on a process that is leaving. Linux only; elsewhere gunicorn's parent check alone applies.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent_pid:  # the parent died before the prctl: no signal will come
        os._exit(1)


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker, before it loads the app: it dies with its master.

    The death signal is tied to the thread that forked; gunicorn's master forks
    its workers from its main thread, the one that lives as long as the master.
    """
    die_with_parent(server.pid)


class GuardedProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 protocol with a deadline on a new connection's first request head,
    and a cap on the connections a process holds.

    Later heads on a kept-alive connection are bounded by its keep-alive timer,
    which gunicorn arms while it waits for the next request.
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.worker.nr_conns > self.worker.worker_connections:
            self._keepalive_timeout()  # closes the connection and lets its task end
            return
        self._head_timer = self.worker.loop.call_later(HEAD_SECONDS, self._head_timeout)
        self.worker.protocols.add(self)

    def _on_headers_complete(self) -> Any:
        self._cancel_head_timer()
        return super()._on_headers_complete()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._current_request is None and not self._closed:
            self.log.info("closing a connection whose request head took over %g s", HEAD_SECONDS)
            self._keepalive_timeout()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self.worker.protocols.discard(self)
        super().connection_lost(exc)

    def close_if_idle(self) -> None:
        """Close the connection unless a request is under way on it (for a stopping worker)."""
        if self._current_request is None and not self._closed:
            self._keepalive_timeout()


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker, serving through ``GuardedProtocol``; ``--threads`` sizes the
    thread pool of the app's bridge (``api.asgi.WsgiBridge``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocols: set[GuardedProtocol] = set()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """gunicorn's warning that this worker ignores ``--threads`` does not apply here."""

    def init_process(self) -> None:
        # The worker builds its connections' protocol from this module-level name.
        gasgi.ASGIProtocol = GuardedProtocol
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from api.asgi import WsgiBridge

        bridge = getattr(self.asgi, "bridge", self.asgi)  # behind api.live's routes, or alone
        if isinstance(bridge, WsgiBridge):
            bridge.threads = self.cfg.threads
        # What the app holds for good (modules, the models, the spec) out of the collector's
        # reach: a full collection otherwise walks it all, a pause of tens of ms per process.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    async def _shutdown(self) -> None:
        """A stopping worker closes its idle and half-opened connections at once (a client's next
        request goes to the new workers), then waits for the requests under way, as gunicorn
        does, for at most its graceful timeout."""
        for protocol in list(self.protocols):
            protocol.close_if_idle()
        await super()._shutdown()
