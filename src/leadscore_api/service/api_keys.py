"""API keys: creation, listing, revocation and checking a presented key.

A key looks like ``lsk_<id>_<secret>``. The public ``<id>`` finds the row in one indexed
lookup; the secret is 256 random bits, so storing its plain SHA-256 is enough: a slow password
hash (bcrypt, argon2) protects low-entropy human passwords against guessing, which is hopeless
against 2^256 possibilities anyway, and would add milliseconds to every request. Only the
hash is stored; the key itself is shown once, when created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import ApiKey

SCOPES: tuple[str, ...] = (
    "events:write",
    "leads:read",
    "leads:write",
    "rules:admin",
    "webhooks:admin",
    "keys:admin",
)
KEY_PREFIX = "lsk"
ADMIN_KEY_ID = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class UnknownScope(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, de-duplicated in a stable order; raises ``UnknownScope`` on a bad one."""
    out: list[str] = []
    for scope in scopes:
        if scope not in SCOPES:
            raise UnknownScope(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        if scope not in out:
            out.append(scope)
    return out


def create_key(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """A new key row and the key itself (the only time it exists in clear)."""
    checked = check_scopes(scopes)
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name, key_hash=hash_key(key), scopes=checked, created_at=utcnow())
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str, now: datetime | None = None) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    return row


def admin_principal(presented: str, admin_key: str | None) -> Principal | None:
    """The bootstrap admin, if ``presented`` is ``LEADSCORE_ADMIN_API_KEY`` (constant-time)."""
    if admin_key and hmac.compare_digest(presented.encode("utf-8"), admin_key.encode("utf-8")):
        return Principal(
            key_id=ADMIN_KEY_ID, name="LEADSCORE_ADMIN_API_KEY", scopes=frozenset(SCOPES)
        )
    return None


def key_principal(session: Session, presented: str) -> Principal | None:
    """The principal of a stored, unrevoked key, or None (hash compared in constant time)."""
    prefix, sep, rest = presented.partition("_")
    key_id, sep2, _secret = rest.partition("_")
    if prefix != KEY_PREFIX or not sep or not sep2 or not key_id or len(key_id) > 40:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(presented)):
        return None
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


def authenticate(session: Session, presented: str, admin_key: str | None) -> Principal | None:
    """The principal for a presented key (admin key or stored key), or None."""
    return admin_principal(presented, admin_key) or key_principal(session, presented)
