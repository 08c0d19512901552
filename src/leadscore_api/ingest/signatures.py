"""Authentication checks shared by the platform adapters.

Every inbound platform proves itself differently (an HMAC, an ECDSA signature, HTTP basic auth, a
token in the URL), but the failure is always the same for the caller: 401 with nothing stored.
The helpers here compare secrets in constant time, so that response timing never tells an
attacker how much of a guessed signature or password was right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from leadscore_api.errors import InvalidPayload, WebhookUnauthenticated


class SignatureError(WebhookUnauthenticated):
    """The request does not prove it comes from the platform: answer 401, store nothing.

    The message says what was wrong (missing header, bad signature, stale timestamp) and never
    contains the expected secret or signature.
    """


class BasicAuthError(SignatureError):
    """Wrong or missing HTTP basic credentials: the answer carries a Basic challenge."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Basic realm="leadscore webhooks"'})


class PayloadError(InvalidPayload):
    """The body as a whole cannot be read (not JSON, wrong shape): answer 400, store nothing."""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value by case-insensitive name, whatever mapping the caller passes."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def secure_equals(expected: str | bytes, provided: str | bytes) -> bool:
    """Constant-time comparison of two secrets (``hmac.compare_digest``), str or bytes."""
    left = expected.encode() if isinstance(expected, str) else expected
    right = provided.encode() if isinstance(provided, str) else provided
    return hmac.compare_digest(left, right)


def hmac_digest(key: str | bytes, message: bytes, algorithm: str) -> bytes:
    """Raw HMAC of ``message`` under ``key`` with ``algorithm`` ("sha256", "sha1")."""
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, message, getattr(hashlib, algorithm)).digest()


def b64decode_strict(value: str) -> bytes:
    """Decode standard base64, raising ``ValueError`` on anything else."""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not valid base64") from exc


def check_timestamp(timestamp: str | int | float, now: datetime, tolerance_seconds: int) -> float:
    """The signed Unix timestamp as seconds, if it is within ``tolerance_seconds`` of ``now``.

    A signature over a timestamp only stops replays when old (or far-future) timestamps are
    refused; the window allows for clock skew and the platform's own queueing.
    """
    try:
        seconds = float(timestamp)
    except (TypeError, ValueError) as exc:
        raise SignatureError("the signed timestamp is not a Unix time in seconds") from exc
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise SignatureError("the signed timestamp is not a Unix time in seconds")
    age = now.timestamp() - seconds
    if abs(age) > tolerance_seconds:
        direction = "old" if age > 0 else "far in the future"
        raise SignatureError(
            f"the signed timestamp is {abs(int(age))} s {direction}; "
            f"at most {tolerance_seconds} s is accepted"
        )
    return seconds


def check_basic_auth(headers: Mapping[str, str], secret: str) -> None:
    """HTTP basic auth against ``secret`` written as ``user:password``.

    Postmark and Brevo put the credentials in the webhook URL (``https://user:pass@host/...``)
    and send them as an ``Authorization: Basic`` header.
    """
    value = header(headers, "authorization")
    if not value:
        raise BasicAuthError("missing HTTP basic credentials (Authorization: Basic ...)")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise BasicAuthError("the Authorization header is not HTTP basic auth")
    try:
        provided = b64decode_strict(encoded)
    except ValueError as exc:
        raise BasicAuthError("the basic auth credentials are not valid base64") from exc
    if not secure_equals(secret.encode(), provided):
        raise BasicAuthError("wrong user name or password")


def check_token(headers: Mapping[str, str], query: Mapping[str, str], secret: str) -> None:
    """A shared token passed as ``?token=`` or in the ``X-Leadscore-Token`` header.

    Used where the platform cannot sign (Mailchimp audience webhooks, plain website forms).
    """
    provided = header(headers, "x-leadscore-token") or query.get("token")
    if not provided:
        raise SignatureError(
            "missing token: pass ?token=... in the URL or an X-Leadscore-Token header"
        )
    if not secure_equals(secret, provided):
        raise SignatureError("wrong token")
