"""Standard Webhooks signing: secrets, the canonical body and the three ``webhook-*`` headers.

Signatures are made by the reference implementation (``standardwebhooks``) so that what we send
is exactly what every receiver's verifier expects: ``v1,<base64 HMAC-SHA256>`` over
``{webhook-id}.{webhook-timestamp}.{body}``. During a secret rotation both the new and the old
secret sign, separated by a space, as the specification allows.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def generate_secret() -> str:
    """A new signing secret: 32 random bytes, base64, prefixed ``whsec_``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def is_valid_secret(value: str) -> bool:
    """Whether ``value`` is a ``whsec_`` secret of 24 to 64 bytes (for caller-supplied secrets)."""
    if not value.startswith(SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        return False
    return 24 <= len(raw) <= 64


def canonical_body(payload: dict[str, Any]) -> str:
    """The body as sent: compact JSON with sorted keys.

    The payload is stored as JSON (JSONB on PostgreSQL, which reorders keys); serialising it the
    same way on every attempt keeps the body byte-identical across retries and replays.
    """
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign(msg_id: str, timestamp: int, body: str, secrets_: Sequence[str]) -> str:
    """The ``webhook-signature`` header value: one ``v1,...`` per secret, space-separated."""
    at = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets_)


def signature_headers(
    msg_id: str, body: str, secrets_: Sequence[str], timestamp: int
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (the timestamp is the attempt's)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, secrets_),
    }
