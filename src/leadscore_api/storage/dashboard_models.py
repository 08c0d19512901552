"""Dashboard sign-ins, kept in the database so that every replica accepts the same cookie.

Why a table rather than a signed cookie: a revoked API key must end its sessions at once, and
logging out must really end one; both need server-side state that all replicas share. Only the
token's SHA-256 is stored (the token is 256 random bits, as for API keys), so a copy of the
table opens no session.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType


class DashboardSession(Base):
    """One signed-in browser: which key signed it in, with which scopes, until when."""

    __tablename__ = "dashboard_sessions"
    __table_args__ = (Index("ix_dashboard_sessions_expires_at", "expires_at"),)

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The API key's id, or ``admin`` for the bootstrap key (which has no row).
    key_id: Mapped[str] = mapped_column(String(40))
    #: The SHA-256 of the key itself: a changed bootstrap admin key ends its sessions.
    key_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
