"""Platform adapters, one module per platform, and the table the router looks them up in.

Each adapter authenticates a request the way its platform signs it and turns the platform's own
payload into canonical events. They import neither FastAPI, SQLAlchemy nor the settings (an
import-linter contract checks it): what they need from the request is in ``WebhookRequest``
and what they need from the settings in ``SourceConfig``.
"""

from __future__ import annotations

from leadscore_api.ingest.sources import (
    brevo,
    form,
    mailchimp,
    mailgun,
    mandrill,
    postmark,
    sendgrid,
    typeform,
)
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
)

ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        sendgrid.ADAPTER,
        mailgun.ADAPTER,
        mailchimp.ADAPTER,
        mandrill.ADAPTER,
        postmark.ADAPTER,
        brevo.ADAPTER,
        typeform.ADAPTER,
        form.ADAPTER,
    )
}


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterError",
    "Ignored",
    "Item",
    "SourceConfig",
    "Verified",
    "WebhookRequest",
]
