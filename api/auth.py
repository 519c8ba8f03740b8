"""Who is calling: the bearer key resolved to a Principal, with a short in-process cache."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from flask import g, request

from api.services import db_session, services
from shared.auth import Principal, authenticate, bearer_token, hash_key

# Keys are only ever created, never changed, so a resolved key stays valid; the
# cache saves one query per poll. Keep it short anyway, for when revocation comes.
AUTH_CACHE_SECONDS = 30.0
AUTH_CACHE_ENTRIES = 4096


class _PrincipalCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def get(self, key_hash: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None or entry[0] < time.monotonic():
                return None
            self._entries.move_to_end(key_hash)
            return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        with self._lock:
            self._entries[key_hash] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > AUTH_CACHE_ENTRIES:
                self._entries.popitem(last=False)


_cache = _PrincipalCache()


def current_principal() -> Principal:
    """The authenticated caller of this request; UnauthorizedError (401) if none."""
    principal: Principal | None = g.get("principal")
    if principal is not None:
        return principal
    key = bearer_token(request.headers.get("Authorization"))
    # The cache is keyed by database too: tests run several apps in one process.
    cache_key = f"{services().settings.database_url}\0{hash_key(key)}"
    principal = _cache.get(cache_key)
    if principal is None:
        principal = authenticate(db_session(), key, admin_key=services().settings.admin_key)
        _cache.put(cache_key, principal)
    g.principal = principal
    return principal
