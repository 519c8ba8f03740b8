"""Every Redis client of stylequeue is made here, from the settings.

``STYLEQUEUE_REDIS_URL`` is one of redis-py's own URLs (``redis://``,
``rediss://``, ``unix://``), or, for a Redis that Sentinel watches and fails
over, Kombu's sentinel form (the one Celery's broker reads too)::

    sentinel://[[USER]:PASSWORD@]HOST[:PORT][/DB];sentinel://HOST2[:PORT2];...

one address per sentinel (port 26379 when left out), the name of the master
they watch in ``STYLEQUEUE_REDIS_SENTINEL_MASTER``. The password, user name and
database are the Redis's (the sentinels are asked without one), written on the
first address, or repeated alike on every one. A client made here asks the
sentinels for the master whenever it opens a connection, so after a failover
(a dead connection, or a ``READONLY`` answer from a demoted master) its next
connection goes to the new master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.settings import Settings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379  # Sentinel's own, as Kombu assumes it


@dataclass(frozen=True)
class SentinelAddress:
    """What a ``sentinel://`` URL says: where the sentinels are, and how to talk to the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The sentinels, database and credentials of a ``sentinel://`` URL.

    Raises ValueError saying what is wrong (the settings name the variable).
    """
    parts = url.split(";")
    sentinels: list[tuple[str, int]] = []
    seen: dict[str, set[Any]] = {"db": set(), "username": set(), "password": set()}
    for index, part in enumerate(parts):
        if not part.strip():
            raise ValueError(
                f"address {index + 1} of {len(parts)} is empty (a ';' too many?); "
                "expected sentinel://HOST:PORT;sentinel://HOST:PORT;..."
            )
        found = urlsplit(part.strip())
        if found.scheme != SENTINEL_SCHEME:
            raise ValueError(f"{part!r} is not a sentinel:// address; every address must be one")
        if found.query or found.fragment:
            raise ValueError(f"{part!r}: options after '?' or '#' are not supported")
        try:
            host, port = found.hostname, found.port
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
        if not host:
            raise ValueError(f"{part!r} names no host")
        sentinels.append((host, port or DEFAULT_SENTINEL_PORT))
        path = found.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"{part!r}: the database must be a number, not {path!r}")
            seen["db"].add(int(path))
        if found.username:
            seen["username"].add(unquote(found.username))
        if found.password is not None:
            seen["password"].add(unquote(found.password))
    for what, values in seen.items():
        if len(values) > 1:
            raise ValueError(f"the addresses give different values of the {what}")
    return SentinelAddress(
        sentinels=tuple(sentinels),
        db=next(iter(seen["db"]), 0),
        username=next(iter(seen["username"]), None),
        password=next(iter(seen["password"]), None),
    )


def redis_client(settings: Settings, *, timeout: float, retry: Retry | None = None) -> redis.Redis:
    """A client of the product's Redis: every command's and every connect's limit is
    ``timeout`` seconds; ``retry``: redis-py's default (a few quick tries) when None.

    With a ``sentinel://`` URL it is a client of the master the sentinels name now, and
    of the next one after a failover. ``close()`` closes its sentinel connections too.
    """
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if retry is not None:
        options["retry"] = retry
    if not is_sentinel_url(settings.redis_url):
        return redis.Redis.from_url(settings.redis_url, **options)
    master = _master_name(settings)
    address = parse_sentinel_url(settings.redis_url)
    sentinel = Sentinel(
        list(address.sentinels),
        # Asking the next sentinel is the retry: a dead one costs one connect, not ten.
        sentinel_kwargs={**sentinel_socket_options(timeout), "retry": Retry(NoBackoff(), 0)},
    )
    client = sentinel.master_for(
        master,
        redis_class=_SentinelMasterClient,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )
    assert isinstance(client, _SentinelMasterClient)
    client.sentinel_manager = sentinel
    return client


def sentinel_socket_options(timeout: float) -> dict[str, Any]:
    """The socket options of a connection to a sentinel (its answers are quick and small)."""
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "socket_keepalive": True}


def sentinel_transport_options(settings: Settings, *, timeout: float) -> dict[str, Any]:
    """What Kombu's redis transport needs on top of its usual options for a
    ``sentinel://`` broker URL; nothing for another URL."""
    if not is_sentinel_url(settings.redis_url):
        return {}
    return {
        "master_name": _master_name(settings),
        "sentinel_kwargs": sentinel_socket_options(timeout),
    }


def _master_name(settings: Settings) -> str:
    if not settings.redis_sentinel_master:
        variable = "STYLEQUEUE_REDIS_SENTINEL_MASTER"
        raise ConfigError(
            f"{variable} must name the master the sentinels watch "
            "(their 'sentinel monitor NAME ...') when STYLEQUEUE_REDIS_URL is sentinel://",
            details={"variable": variable},
        )
    return settings.redis_sentinel_master


class _SentinelMasterClient(redis.Redis):
    """A client of the master the sentinels name; ``close()`` closes the sentinel clients too."""

    sentinel_manager: Sentinel | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.sentinel_manager is not None:
                for connection in self.sentinel_manager.sentinels:
                    connection.close()


def async_redis_client(settings: Settings, *, connect_timeout: float) -> redis.asyncio.Redis:
    """An asyncio client of the product's Redis (the API's event loop listens on it):
    connects within ``connect_timeout`` seconds; a read waits as long as the caller
    lets it (a subscriber waits for messages). With a ``sentinel://`` URL, a client of
    the master the sentinels name whenever it connects."""
    options: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "socket_keepalive": True}
    if not is_sentinel_url(settings.redis_url):
        return redis.asyncio.Redis.from_url(settings.redis_url, **options)
    address = parse_sentinel_url(settings.redis_url)
    sentinel = redis.asyncio.sentinel.Sentinel(
        list(address.sentinels),
        sentinel_kwargs=sentinel_socket_options(connect_timeout),
    )
    return sentinel.master_for(
        _master_name(settings),
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )
