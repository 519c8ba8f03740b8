"""API keys: random tokens handed out once, stored only as their sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import UnauthorizedError
from shared.models import ApiClient
from shared.webhooks import new_secret

KEY_PREFIX = "sq_"  # makes a leaked key easy to recognise (and to grep for)
KEY_RANDOM_BYTES = 32
ADMIN_CLIENT_NAME = "admin"  # the client that STYLEQUEUE_ADMIN_KEY authenticates as


@dataclass(frozen=True)
class Principal:
    """Who is calling: the authenticated API client."""

    client_id: int
    name: str
    is_admin: bool


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def same_secret(sent: str, expected: str) -> bool:
    """Whether ``sent`` is ``expected``, in constant time, whatever characters ``sent`` holds.

    ``hmac.compare_digest`` refuses str with non-ASCII characters (a TypeError: a 500 for a
    header or form field the caller controls), so both are compared as UTF-8 bytes.
    """
    return hmac.compare_digest(_utf8(sent), _utf8(expected))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates too: never an error


def hash_key(key: str) -> str:
    # A fast hash is right here: the key is 256 random bits, not a password.
    return hashlib.sha256(_utf8(key)).hexdigest()


def create_client(session: Session, name: str, *, is_admin: bool = False) -> tuple[ApiClient, str]:
    """Create an API client and commit; returns it and its key (the only time the key exists).

    Its webhook signing secret is made with it (``client.webhook_secret``)."""
    name = name.strip()
    if not name:
        raise ValueError("a client needs a name")
    key = generate_key()
    client = ApiClient(
        name=name, key_hash=hash_key(key), is_admin=is_admin, webhook_secret=new_secret()
    )
    session.add(client)
    session.commit()
    return client, key


def authenticate(session: Session, key: str, *, admin_key: str | None = None) -> Principal:
    """The client whose key this is; UnauthorizedError if none.

    ``admin_key`` (STYLEQUEUE_ADMIN_KEY) authenticates as the admin client,
    which is created on first use.
    """
    key_hash = hash_key(key)
    client = session.scalars(select(ApiClient).where(ApiClient.key_hash == key_hash)).one_or_none()
    if client is None and admin_key and same_secret(key, admin_key):
        client = _ensure_admin_client(session, key_hash)
    if client is None:
        raise UnauthorizedError("the API key is not valid", code="invalid_api_key")
    return Principal(client.id, client.name, client.is_admin)


def _ensure_admin_client(session: Session, key_hash: str) -> ApiClient:
    try:
        client = ApiClient(name=ADMIN_CLIENT_NAME, key_hash=key_hash, is_admin=True)
        session.add(client)
        session.commit()
        return client
    except IntegrityError:  # another process created it first
        session.rollback()
        return session.scalars(select(ApiClient).where(ApiClient.key_hash == key_hash)).one()


def bearer_token(authorization: str | None) -> str:
    """The key from an ``Authorization: Bearer <key>`` header; UnauthorizedError if absent."""
    if not authorization:
        raise UnauthorizedError(
            "send an API key as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError(
            "the Authorization header must be 'Bearer <key>'", code="invalid_api_key"
        )
    return token
