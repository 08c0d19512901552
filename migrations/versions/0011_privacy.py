"""Privacy: the erasure tombstone and its key; email identity keys normalised again.

The tables: ``erased_keys`` (keyed hashes of an erased person's identities and event ids) and
``install_secrets`` (the random key of those hashes, made at the first erasure).

The data: emails are now normalised by ``email-validator`` (NFC, IDNA domain in its Unicode
form), so an identity stored as ``anna@xn--mller-kva.de`` must become ``anna@müller.de`` or the
next event of that person would make a second lead. Only values that can change (non-ASCII or
``xn--``) are read. When the new key already belongs to another lead, the two are one person
with two leads: the row is left as it is, and a warning names both lead ids so that someone
merges them (``POST /v1/leads/{id}/merge``); a migration does not merge people.

Revision ID: 0011_privacy
Revises: 0010_challengers
Create Date: 2026-11-26
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from leadscore_api.ingest.events import normalise_email
from leadscore_api.storage.base import UTCDateTime

revision: str = "0011_privacy"
down_revision: str | None = "0010_challengers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "erased_keys",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_erased_keys"),
    )
    op.create_table(
        "install_secrets",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_install_secrets"),
    )
    _renormalise_emails()


def _renormalise_emails() -> None:
    bind = op.get_bind()
    identities = sa.table(
        "lead_identities",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("value", sa.String),
        sa.column("lead_id", sa.String),
    )
    leads = sa.table("leads", sa.column("id", sa.String), sa.column("email", sa.String))
    rows = bind.execute(
        sa.select(identities.c.id, identities.c.value, identities.c.lead_id).where(
            identities.c.kind == "email"
        )
    ).all()
    taken = {value: lead_id for _, value, lead_id in rows}
    for row_id, value, lead_id in rows:
        if value.isascii() and "xn--" not in value:
            continue
        try:
            key = normalise_email(value)
        except ValueError:
            continue
        if key == value:
            continue
        owner = taken.get(key)
        if owner is not None:
            if owner != lead_id:
                log.warning(
                    "leads %s and %s have the same email once normalised: merge them", owner, lead_id
                )
            continue
        bind.execute(sa.update(identities).where(identities.c.id == row_id).values(value=key))
        bind.execute(
            sa.update(leads).where(leads.c.id == lead_id, leads.c.email == value).values(email=key)
        )
        taken[key] = lead_id
        del taken[value]


def downgrade() -> None:
    op.drop_table("install_secrets")
    op.drop_table("erased_keys")
