"""Platform adapters, one module per platform, and the table the router looks them up in.

Each adapter authenticates a request the way its platform signs it and turns the platform's own
payload into canonical events. They import neither FastAPI nor SQLAlchemy: what they need from
the request is in ``WebhookRequest`` and what they need from the settings in ``SourceConfig``.
"""

from __future__ import annotations

from leadscore_api.config import Settings
from leadscore_api.ingest.attributes import parse_field_map
from leadscore_api.ingest.signatures import SourceNotConfigured
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


def secret_setting(source: str) -> str:
    """The environment variable that holds a source's secret."""
    return f"LEADSCORE_WEBHOOK_{source.upper()}_SECRET"


def source_config(source: str, settings: Settings) -> SourceConfig:
    """What the adapter of ``source`` needs from the settings.

    Raises ``SourceNotConfigured`` when the secret is unset, or a field map cannot be read, with
    a sentence that names the variable to set.
    """
    secret = getattr(settings, f"webhook_{source}_secret", None)
    if not secret or not str(secret).strip():
        raise SourceNotConfigured(
            f"source {source} is not configured: set {secret_setting(source)}"
        )
    field_map_text: str | None = None
    field_map_setting = ""
    if source in ("form", "mailchimp"):
        field_map_text = settings.webhook_form_field_map
        field_map_setting = "LEADSCORE_WEBHOOK_FORM_FIELD_MAP"
    elif source == "typeform":
        field_map_text = settings.webhook_typeform_field_map
        field_map_setting = "LEADSCORE_WEBHOOK_TYPEFORM_FIELD_MAP"
    try:
        field_map = parse_field_map(field_map_text, field_map_setting)
    except ValueError as exc:
        raise SourceNotConfigured(str(exc)) from exc
    return SourceConfig(
        secret=str(secret).strip(),
        tolerance_seconds=settings.webhook_timestamp_tolerance_seconds,
        signed_url=settings.webhook_mandrill_url if source == "mandrill" else None,
        field_map=field_map,
    )


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterError",
    "Ignored",
    "Item",
    "SourceConfig",
    "Verified",
    "WebhookRequest",
    "secret_setting",
    "source_config",
]
