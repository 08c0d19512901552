"""SQL of the erasure tombstone (``erased_keys``) and of the per-install secrets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.base import Base
from leadscore_api.storage.fast_sql import FastStatement
from leadscore_api.storage.models import Event, LeadIdentity
from leadscore_api.storage.privacy_models import ErasedKey, InstallSecret

ERASED_TABLE: Table = Base.metadata.tables["erased_keys"]
#: Rows per IN (...) list, as in the lead repository.
_CHUNK = 500
#: Runs in every ingest that has fresh events: compiled once, on the DBAPI cursor.
_FAST_ERASED_AT = FastStatement(
    select(ERASED_TABLE.c.digest, ERASED_TABLE.c.erased_at).where(
        ERASED_TABLE.c.digest.in_(bindparam("digests", expanding=True))
    )
)
_FAST_SECRET = FastStatement(
    select(Base.metadata.tables["install_secrets"].c.value).where(
        Base.metadata.tables["install_secrets"].c.name == bindparam("name")
    )
)


def get_secret(session: Session, name: str) -> str | None:
    for (value,) in _FAST_SECRET.execute(session, {"name": name}):
        return str(value)
    return None


def add_secret(session: Session, name: str, value: str, now: datetime) -> None:
    """Insert the secret; a concurrent insert of the same name makes the unit of work retry."""
    session.add(InstallSecret(name=name, value=value, created_at=now))
    session.flush()


def erased_at(session: Session, digests: Sequence[str]) -> dict[str, datetime]:
    """The erasure time of each digest that is in the tombstone."""
    found: dict[str, datetime] = {}
    unique = sorted(set(digests))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        for digest, when in _FAST_ERASED_AT.execute(session, {"digests": chunk}):
            found[digest] = when
    return found


def record(session: Session, digests: Iterable[str], when: datetime) -> None:
    """Add the digests to the tombstone, or move their erasure time to ``when``."""
    wanted = sorted(set(digests))
    existing = erased_at(session, wanted)
    if existing:
        session.execute(
            update(ErasedKey)
            .where(ErasedKey.digest.in_(list(existing)))
            .values(erased_at=when)
            .execution_options(synchronize_session=False)
        )
    session.add_all(ErasedKey(digest=d, erased_at=when) for d in wanted if d not in existing)
    session.flush()


def lead_keys(session: Session, lead_id: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The identities (kind, value) and the event ids of a lead, before they are erased."""
    identities = [
        (kind, value)
        for kind, value in session.execute(
            select(LeadIdentity.kind, LeadIdentity.value).where(LeadIdentity.lead_id == lead_id)
        )
    ]
    event_ids = list(session.scalars(select(Event.id).where(Event.lead_id == lead_id)))
    return identities, event_ids
