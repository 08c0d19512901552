"""Tables that keep an erasure honoured: the tombstone of erased people and the key that hides it.

An erasure deletes the person; a platform that retries an old webhook, or a spreadsheet
imported again, must not bring them back. So the erasure leaves, for each identity and event
id it removed, a keyed hash (HMAC-SHA256) and the time of the erasure, nothing else: no row
says which lead it was, and a hash cannot be read back into the email without the key and a
guess of the address (see ``service/tombstones.py`` and docs/privacy.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, utcnow


class ErasedKey(Base):
    """One hashed identity (``email``, ``external_id``, ...) or event id of an erased person."""

    __tablename__ = "erased_keys"

    #: Hex HMAC-SHA256 of ``kind:value`` under the install's tombstone key.
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The latest erasure that covered it: events that happened before it stay erased.
    erased_at: Mapped[datetime]


class InstallSecret(Base):
    """A random secret made once per installation (per database), shared by every replica."""

    __tablename__ = "install_secrets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
