"""How ``stylequeue api`` serves: gunicorn's settings and hooks (``gunicorn -c python:api.serving``).

The command line (``cli.server_cmds.api_argv``) adds the bind address, the number
of processes and the application; everything else that shapes the serving model
is here, so that ``stylequeue api``, ``stylequeue up``, the image and the
benchmarks run the same server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

# The master's control socket (gunicornc) is one path per user by default, shared by
# every gunicorn that user runs; nothing here uses it.
control_socket_disable = True

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process the moment ``parent_pid`` (its parent) dies.

    A worker whose master was killed would otherwise keep the listening socket
    open and go on serving the connections it holds until gunicorn's own check
    (once a second) and its graceful timeout let it go: the port stays taken, so
    a new master cannot bind, and new connections queue on a socket nobody
    accepts from. Linux only; elsewhere gunicorn's parent check alone applies.
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
