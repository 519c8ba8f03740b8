"""Hosts of their own for a test: Linux network namespaces joined by one bridge.

``Network`` makes a switch (a namespace that holds only a bridge) and hosts, each a
namespace with one veth into the switch and its addresses on 198.18.0.0/24 (the
range RFC 2544 sets aside for testing network devices; it exists only inside this
run's switch). Nothing is added to the machine's own network namespace: the test
itself joins as a host of its own (``entered``), so its HTTP, database and object
store clients cross the same network as every other host's.

A host runs a command through ``Host.argv`` (``ip netns exec``; with
``own_hostname``, in a UTS namespace of its own too, named after the host, so that the
worker name a claim records names the host). The faults:

- ``cut`` / ``mend``: the host's switch port down / up. Both sides then hear nothing,
  as with a pulled cable or a dead switch port: no reset, no error, packets vanish.
- ``blackhole`` / ``unblock``: a blackhole route to one address inside one host, so
  that host alone cannot reach it: nothing it sends there leaves (a new connection
  fails at once with ``EINVAL``; one already open can no longer send).

Names are ``sqf-<pid>-<hex>-<host>``, unique per run. A new ``Network`` first removes
the namespaces of earlier runs whose test process is gone, with the processes still
in them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sqf"
SUBNET = "198.18.0"
PREFIX_LENGTH = 24
BRIDGE = "br0"
CLONE_NEWNET = 0x40000000  # <sched.h>
IP_SECONDS = 30.0
IP = shutil.which("ip") or next(
    (path for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.path.exists(path)), None
)
STALE = re.compile(rf"{PREFIX}-(\d+)-[0-9a-f]+-[a-z0-9]+")


def _ip(*args: str) -> str:
    assert IP is not None, "no ip (iproute2)"
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=IP_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why this machine cannot make network namespaces for a test, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if IP is None:
        return "no `ip` on this machine (Debian's iproute2)"
    if shutil.which("unshare") is None:
        return "no `unshare` on this machine (util-linux)"
    probe = f"{PREFIX}-{os.getpid()}-0-probe"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot make a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


def namespaces() -> list[str]:
    """The names `ip netns list` shows (each line: a name, then maybe "(id: N)")."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def remove_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name`` (only ever this test's own processes:
    the name is of this module's making), then delete it."""
    for pid in _ip("netns", "pids", name).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name)


def remove_stale() -> list[str]:
    """Remove the namespaces left by runs whose test process is gone (killed mid-run)."""
    removed = []
    for name in namespaces():
        match = STALE.fullmatch(name)
        if match is not None and not Path(f"/proc/{match[1]}").exists():
            remove_namespace(name)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Host:
    """One host: a namespace, its port on the switch, its addresses."""

    name: str
    namespace: str
    port: str  # the veth end in the switch's namespace
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def hostname(self) -> str:
        """The name the host's own-hostname commands see (``socket.gethostname()``)."""
        return f"{PREFIX}-{self.name}"

    def argv(self, command: Sequence[str], *, own_hostname: bool = False) -> list[str]:
        """``command`` run on this host. ``ip netns exec`` and ``unshare`` exec in place,
        so the process started is the command's own (its pid, its process group)."""
        assert IP is not None
        base = [IP, "netns", "exec", self.namespace]
        if not own_hostname:
            return [*base, *command]
        set_name = 'hostname "$0" && exec "$@"'
        return [*base, "unshare", "--uts", "--", "sh", "-c", set_name, self.hostname, *command]


class Network:
    """A switch and the hosts on it. Always ``close()`` it: that removes every namespace
    (and so every veth and the bridge) and kills anything still running in them."""

    def __init__(self) -> None:
        remove_stale()
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self.switch = self._namespace("switch")
        _ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.switch, "link", "set", BRIDGE, "up")

    def _namespace(self, name: str) -> str:
        namespace = f"{PREFIX}-{self.tag}-{name}"
        _ip("netns", "add", namespace)
        self._made.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def add_host(self, name: str, *octets: int) -> Host:
        """A host ``name`` with 198.18.0.<octet> for each octet, on one interface, eth0."""
        namespace = self._namespace(name)
        port = f"to-{name}"[:15]
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", port, "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", BRIDGE)
        _ip("-n", self.switch, "link", "set", port, "up")
        addresses = tuple(f"{SUBNET}.{octet}" for octet in octets)
        for address in addresses:
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, port, addresses)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its switch port goes down, nothing crosses either way."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def mend(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def blackhole(self, host: Host, address: str) -> None:
        """``host`` alone can no longer reach ``address`` (a route to nowhere in its table)."""
        _ip("-n", host.namespace, "route", "add", "blackhole", f"{address}/32")

    def unblock(self, host: Host, address: str) -> None:
        _ip("-n", host.namespace, "route", "del", "blackhole", f"{address}/32")

    @contextlib.contextmanager
    def entered(self, host: Host) -> Iterator[None]:
        """The calling thread on ``host``'s network until the block ends: the sockets it
        opens meanwhile belong to that host (for good), as do the threads and processes
        it starts. Only the network namespace changes (setns(2) on this thread alone)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{host.namespace}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def close(self) -> None:
        errors = []
        for namespace in reversed(self._made):
            try:
                remove_namespace(namespace)
            except RuntimeError as exc:  # go on: remove the others
                errors.append(str(exc))
        self._made.clear()
        if errors:
            raise RuntimeError("; ".join(errors))


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")
