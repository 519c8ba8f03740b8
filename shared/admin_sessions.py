"""Server-side sessions of the /admin page: one ``admin_sessions`` row per login.

The browser's cookie carries a random token; the row keeps only its sha256, the
admin client and the expiry. Every request looks the row up, so ending a session
(logging out) ends every copy of its cookie.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.auth import Principal, hash_key
from shared.models import AdminSession, ApiClient, utcnow


def start_admin_session(session: Session, token: str, client_id: int, *, hours: float) -> None:
    """Record a login under ``token`` for ``hours``; expired sessions are removed on the way."""
    now = utcnow()
    session.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
    session.add(
        AdminSession(
            id=hash_key(token),
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    session.commit()


def end_admin_session(session: Session, token: str) -> None:
    session.execute(delete(AdminSession).where(AdminSession.id == hash_key(token)))
    session.commit()


def session_admin(session: Session, token: str) -> Principal | None:
    """The admin of an unexpired session; None when there is none or its client is no
    longer an admin."""
    query = (
        select(ApiClient.id, ApiClient.name, ApiClient.is_admin)
        .join(AdminSession, AdminSession.client_id == ApiClient.id)
        .where(AdminSession.id == hash_key(token), AdminSession.expires_at > utcnow())
    )
    row = session.execute(query).one_or_none()
    if row is None or not row.is_admin:
        return None
    return Principal(row.id, row.name, True)
