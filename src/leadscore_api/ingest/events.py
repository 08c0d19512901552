"""The canonical event every source is turned into before it reaches the scoring core."""

from __future__ import annotations

import functools
import unicodedata
from datetime import UTC, datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leadscore_api.ingest.storable import check_identifier, check_storable

#: Types the bundled rulesets know. Others are accepted, stored, and score nothing.
KNOWN_EVENT_TYPES = frozenset(
    {
        "form.submitted",
        "page.viewed",
        "email.delivered",
        "email.opened",
        "email.clicked",
        "email.bounced",
        "email.unsubscribed",
        "email.spam_reported",
        "content.downloaded",
        "newsletter.subscribed",
        "webinar.registered",
        "webinar.attended",
        "demo.requested",
        "contact.requested",
        "social.engaged",
        "lead.contacted",
        "lead.accepted",
        "opportunity.created",
        "deal.won",
        "deal.lost",
    }
)


def normalise_email(email: str) -> str:
    """The identity key of an email address, so that one person is one lead however it is typed.

    Checked and normalised by ``email-validator``: trimmed, Unicode NFC, the domain lower-cased
    and run through IDNA (UTS #46), so ``anna@Müller.de`` and its ASCII form
    ``anna@xn--mller-kva.de`` give the same key. The key keeps the domain in its Unicode form,
    the one people read in a CRM. The local part is lower-cased too (``str.lower``, not
    ``casefold``, which would also turn ``ß`` into ``ss`` and join two mailboxes): local parts
    are case-sensitive in theory and case-insensitive at every mail provider in practice.

    Raises ``ValueError`` naming what is wrong when it is not an email address; syntax only,
    no DNS lookup. Special-use domains (``.test``, ``.local``, ``.invalid``...) cannot receive
    mail and are refused.
    """
    return _normalise(email.strip())


@functools.lru_cache(maxsize=8192)
def _normalise(email: str) -> str:
    # Cached: one person's events repeat one address, and the check costs ~30 µs.
    try:
        checked = validate_email(
            email,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as exc:
        raise ValueError(f"is not an email address: {exc}") from None
    local = unicodedata.normalize("NFC", checked.local_part.lower())
    return f"{local}@{checked.domain}"


class LeadRef(BaseModel):
    """Who the event is about: an email, a CRM id, or both."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=320, examples=["anna.rossi@metalpro.it"])
    external_id: str | None = Field(default=None, max_length=200, examples=["crm-4711"])

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_identifier(value)
        return normalise_email(value)

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        check_identifier(value)
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _one_identity(self) -> LeadRef:
        if self.email is None and self.external_id is None:
            raise ValueError("needs an email or an external_id")
        return self


class CanonicalEvent(BaseModel):
    """One thing a lead did, or one thing that happened to a lead, from any source."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1, max_length=200, description="Idempotency key: the same id is applied once."
    )
    type: str = Field(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
    occurred_at: datetime = Field(description="RFC 3339 with a zone.")
    lead: LeadRef
    source: str | None = Field(default=None, max_length=100)
    properties: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    raw: Any = Field(default=None, description="The platform's own payload, kept for audit.")

    @field_validator("id", "source")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return check_identifier(value)

    @field_validator("properties", "attributes", "raw")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_storable(value)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time_text(cls, value: Any) -> Any:
        # Pydantic would read a number as Unix seconds and ``true`` as 1970: a time sent as
        # anything but text is a client's mistake, not a time (adapters pass datetimes).
        if isinstance(value, str | datetime):
            return value
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-11-20T10:00:00Z")

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("must include a time zone (RFC 3339), e.g. 2026-11-20T10:00:00Z")
        return value.astimezone(UTC)

    @property
    def known_type(self) -> bool:
        return self.type in KNOWN_EVENT_TYPES
