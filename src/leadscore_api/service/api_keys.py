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
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import InvalidInput, NotFound
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import ApiKey
from leadscore_api.storage.repositories import api_keys as api_keys_repo
from leadscore_api.storage.unit_of_work import in_transaction

SCOPES: tuple[str, ...] = (
    "events:write",
    "leads:read",
    "leads:write",
    "rules:admin",
    "webhooks:admin",
    "keys:admin",
    "reps:admin",
    "crm:admin",
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


class UnknownScope(InvalidInput):
    def __init__(self, message: str) -> None:
        super().__init__(f"scopes: {message}", errors=[{"field": "scopes", "message": message}])
        self.message = message


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


def public_prefix(row: ApiKey) -> str:
    """The start of a key that identifies it without revealing it (``lsk_<id>_``)."""
    return f"{KEY_PREFIX}_{row.id}_"


def create_key(
    session_factory: sessionmaker[Session], name: str, scopes: Iterable[str]
) -> tuple[ApiKey, str]:
    """A new key row and the key itself (the only time it exists in clear)."""
    checked = check_scopes(scopes)
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name, key_hash=hash_key(key), scopes=checked, created_at=utcnow())
    in_transaction(session_factory, lambda session: api_keys_repo.add(session, row))
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return api_keys_repo.list_all(session)


def revoke_key(session_factory: sessionmaker[Session], key_id: str) -> ApiKey:
    """Revoke (idempotent: revoking twice keeps the first time); NotFound for an unknown id."""

    def work(session: Session) -> ApiKey:
        row = api_keys_repo.get(session, key_id)
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row

    return in_transaction(session_factory, work)


def admin_principal(presented: str, admin_key: str | None) -> Principal | None:
    """The bootstrap admin, if ``presented`` is ``LEADSCORE_ADMIN_API_KEY`` (constant-time).

    The digests are compared, not the keys: equal lengths, so not even the key's length shows.
    """
    if admin_key and hmac.compare_digest(hash_key(presented), hash_key(admin_key)):
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
    row = api_keys_repo.get(session, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(presented)):
        return None
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


class PrincipalCache:
    """Keys verified recently, so a request with a known key asks the database nothing.

    Why: checking a stored key was a thread hop and a query on every request, a fifth of what a
    single event cost. An entry lives ``ttl`` seconds; a key revoked through this process is
    dropped at once (:meth:`forget`), one revoked on another replica stops working here when
    its entry expires. Entries are keyed by the key's SHA-256, never the key itself; only keys
    that verified are kept, so unknown keys sent by a scanner cannot fill the cache.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, presented: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        entry = self._entries.get(hash_key(presented))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, presented: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[hash_key(presented)] = (principal, time.monotonic() + self.ttl)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (p, _) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]
