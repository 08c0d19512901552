"""Signing in to the dashboard with an API key, and checking the session at every page.

The browser never holds the key: signing in checks it once (the same checks as the API), then
the cookie carries a random token whose hash finds a ``dashboard_sessions`` row. Each page
checks that row, and that the key behind it is still valid (not revoked; for the bootstrap
admin key, still the configured one), so revoking a key ends its sessions on every replica at
the next page, without a cache to wait for.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.service.api_keys import (
    ADMIN_KEY_ID,
    Principal,
    admin_principal,
    hash_key,
    key_principal,
)
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.dashboard_models import DashboardSession
from leadscore_api.storage.repositories import api_keys as api_keys_repo
from leadscore_api.storage.repositories import dashboard_sessions as sessions_repo
from leadscore_api.storage.unit_of_work import in_transaction

#: The scope a key needs to see the dashboard.
REQUIRED_SCOPE = "leads:read"
#: Longer than any key this service issues; anything longer is refused before hashing.
MAX_KEY_LENGTH = 400


@dataclass(frozen=True)
class SignIn:
    """The outcome of presenting a key: a new session token, or why there is none."""

    token: str | None
    expires_at: datetime | None
    #: ``invalid`` (unknown, malformed, revoked), ``scope`` (valid but without leads:read) or
    #: ``link_scope`` (a link's key with more scopes than leads:read).
    refused: str | None = None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _principal(session: Session, presented: str, admin_key: str | None) -> Principal | None:
    principal = admin_principal(presented, admin_key)
    if principal is None:
        principal = key_principal(session, presented)
    return principal


def sign_in(
    factory: sessionmaker[Session],
    presented: str,
    admin_key: str | None,
    lifetime: timedelta,
    now: datetime | None = None,
    *,
    read_only: bool = False,
) -> SignIn:
    """Check the key as the API does; on success store a session and return its token.

    ``read_only``: the key must have ``leads:read`` and nothing else. The wall-screen link
    carries its key in the URL, where browser history and proxy logs keep it: only a key that
    can do no more than the dashboard shows is accepted there.
    """
    presented = presented.strip()
    if not presented or len(presented) > MAX_KEY_LENGTH or not presented.isprintable():
        return SignIn(token=None, expires_at=None, refused="invalid")
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    expires_at = now + lifetime

    def work(session: Session) -> SignIn:
        principal = _principal(session, presented, admin_key)
        if principal is None:
            return SignIn(token=None, expires_at=None, refused="invalid")
        if not principal.has(REQUIRED_SCOPE):
            return SignIn(token=None, expires_at=None, refused="scope")
        if read_only and principal.scopes != {REQUIRED_SCOPE}:
            return SignIn(token=None, expires_at=None, refused="link_scope")
        sessions_repo.delete_expired(session, now)
        sessions_repo.add(
            session,
            DashboardSession(
                token_sha256=_token_hash(token),
                key_id=principal.key_id,
                key_sha256=hash_key(presented),
                scopes=sorted(principal.scopes),
                created_at=now,
                expires_at=expires_at,
            ),
        )
        return SignIn(token=token, expires_at=expires_at)

    return in_transaction(factory, work)


def current(
    session: Session, token: str | None, admin_key: str | None, now: datetime | None = None
) -> Principal | None:
    """The principal of a live session, or None (no cookie, unknown, expired, key revoked)."""
    if not token or len(token) > 100:
        return None
    row = sessions_repo.get(session, _token_hash(token))
    if row is None or row.expires_at <= (now or utcnow()):
        return None
    if row.key_id == ADMIN_KEY_ID:
        if not admin_key or not hmac.compare_digest(row.key_sha256, hash_key(admin_key)):
            return None
        name = "LEADSCORE_ADMIN_API_KEY"
    else:
        key = api_keys_repo.get(session, row.key_id)
        if (
            key is None
            or key.revoked_at is not None
            or not hmac.compare_digest(key.key_hash, row.key_sha256)
        ):
            return None
        name = key.name
    principal = Principal(key_id=row.key_id, name=name, scopes=frozenset(row.scopes))
    return principal if principal.has(REQUIRED_SCOPE) else None


def sign_out(factory: sessionmaker[Session], token: str | None) -> None:
    if not token or len(token) > 100:
        return
    hashed = _token_hash(token)
    in_transaction(factory, lambda session: sessions_repo.delete_one(session, hashed))
