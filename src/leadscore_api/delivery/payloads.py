"""What an outbound webhook says: Standard Webhooks payloads and subscription filters.

Plain functions of plain data, so the payload a receiver gets can be checked without a
database, and the outbox (which stores these payloads) stays a storage concern.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

WILDCARD = "*"
#: Sent by ``POST /v1/subscriptions/{id}/test``; delivered to that subscription only.
PING_TYPE = "webhook.ping"

#: Lead fields copied into ``data.lead``.
LEAD_FIELDS = (
    "id",
    "email",
    "external_id",
    "letter",
    "score",
    "tier",
    "stage",
    "owner",
    "team",
    "next_action",
    "next_action_due",
)
#: An explanation larger than this (serialised) is left out of the payload, which Standard
#: Webhooks advises to keep small; the receiver can fetch ``/v1/leads/{id}/explain``.
MAX_EXPLANATION_CHARS = 16_000


def rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def subscription_matches(
    event_types: list[str],
    filters: dict[str, Any],
    event_type: str,
    *,
    ruleset_name: str,
    letter: str | None,
    tier: str | None,
) -> bool:
    """Whether a subscription with these types and filters wants this transition of a lead."""
    if WILDCARD not in event_types and event_type not in event_types:
        return False
    wanted_ruleset = filters.get("ruleset")
    if wanted_ruleset and wanted_ruleset != ruleset_name:
        return False
    letters = filters.get("letter")
    if letters and letter not in letters:
        return False
    tiers = filters.get("tier")
    return not (tiers and tier not in tiers)


def build_payload(
    *,
    event_type: str,
    at: datetime,
    lead: dict[str, Any],
    from_value: str | None,
    to_value: str | None,
    event_id: str | None,
    ruleset_name: str,
    ruleset_version: int,
    explanation: dict[str, Any],
) -> dict[str, Any]:
    """The Standard Webhooks body: ``type``, ``timestamp`` and ``data``."""
    data: dict[str, Any] = {
        "lead": {name: rfc3339(lead.get(name)) for name in LEAD_FIELDS},
        "change": {"from": from_value, "to": to_value},
        "event_id": event_id,
        "ruleset": {"name": ruleset_name, "version": ruleset_version},
    }
    explained = json.loads(json.dumps(explanation, default=_json_default))
    if len(json.dumps(explained)) <= MAX_EXPLANATION_CHARS:
        data["explanation"] = explained
    else:
        data["explanation"] = None
        data["explanation_truncated"] = True
    return {"type": event_type, "timestamp": rfc3339(at), "data": data}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def ping_payload(subscription_id: str, at: datetime) -> dict[str, Any]:
    """The body of ``webhook.ping``: proves the URL, secret and signature check work."""
    return {
        "type": PING_TYPE,
        "timestamp": rfc3339(at),
        "data": {"subscription_id": subscription_id, "message": "ping"},
    }
