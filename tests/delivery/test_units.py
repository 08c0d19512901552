"""Pure parts of delivery: schedule, Retry-After, SSRF rules, signatures."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from leadscore_api.config import DEFAULT_RETRY_DELAYS
from leadscore_api.delivery import signer
from leadscore_api.delivery.schedule import JITTER, next_delay
from leadscore_api.delivery.ssrf import (
    UnsafeTargetError,
    address_problem,
    parse_target,
    pin,
    validate_url,
)
from leadscore_api.retry_after import retry_after_seconds


def test_schedule_follows_the_gaps_between_offsets_with_bounded_jitter() -> None:
    rng = random.Random(7)
    delays = DEFAULT_RETRY_DELAYS
    for done in range(1, len(delays)):
        gap = delays[done] - delays[done - 1]
        for _ in range(50):
            delay = next_delay(done, delays, rng=rng)
            assert delay is not None
            assert gap * (1 - JITTER) <= delay <= gap * (1 + JITTER)
    assert next_delay(len(delays), delays, rng=rng) is None
    # The default schedule spans about a day.
    assert delays[-1] == 86400


def test_jitter_spreads_retries() -> None:
    rng = random.Random(1)
    values = {round(next_delay(2, (0, 5, 300), rng=rng) or 0, 3) for _ in range(20)}
    assert len(values) > 10


def test_retry_after_wins_when_longer() -> None:
    assert next_delay(1, (0, 5, 300), retry_after=120, rng=random.Random(0)) == 120
    delay = next_delay(1, (0, 5, 300), retry_after=1, rng=random.Random(0))
    assert delay is not None and delay >= 4
    # Used up: Retry-After does not extend the schedule.
    assert next_delay(3, (0, 5, 300), retry_after=10) is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("99999999", now) == 86400


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///nohost", "host"),
        ("http://example.com:99999/", "not valid"),
        ("not a url", "http or https"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeTargetError, match=message):
        parse_target(url)


def test_loopback_and_metadata_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/x", "http://169.254.169.254/"):
        with pytest.raises(UnsafeTargetError, match="LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS"):
            validate_url(url, allow_private=False)
    assert validate_url("http://127.0.0.1:8080/hook", allow_private=True)


def test_pin_keeps_host_and_tls_name() -> None:
    target = parse_target("https://user:p%40ss@hooks.example.com:8443/in?x=1")
    pinned = pin(target, ipaddress.ip_address("93.184.216.34"))
    assert pinned.url == "https://93.184.216.34:8443/in?x=1"
    assert pinned.host_header == "hooks.example.com:8443"
    assert pinned.sni_hostname == "hooks.example.com"
    assert pinned.auth == ("user", "p@ss")
    plain = pin(parse_target("http://hooks.example.com/in"), ipaddress.ip_address("2001:db8::1"))
    assert plain.url == "http://[2001:db8::1]:80/in"
    assert plain.host_header == "hooks.example.com"
    assert plain.sni_hostname is None


def test_signature_verifies_with_the_reference_code() -> None:
    secret = signer.generate_secret()
    assert secret.startswith("whsec_") and signer.is_valid_secret(secret)
    body = signer.canonical_body({"type": "lead.mql", "data": {"b": 1, "a": "è"}})
    now = int(datetime.now(UTC).timestamp())
    headers = signer.signature_headers("msg_1", body, [secret], now)
    assert Webhook(secret).verify(body, headers) == {"type": "lead.mql", "data": {"a": "è", "b": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(signer.generate_secret()).verify(body, headers)


def test_rotation_sends_both_signatures() -> None:
    old, new = signer.generate_secret(), signer.generate_secret()
    body = signer.canonical_body({"type": "lead.sql"})
    headers = signer.signature_headers(
        "msg_2", body, [new, old], int(datetime.now(UTC).timestamp())
    )
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_secret_validation() -> None:
    assert not signer.is_valid_secret("whsec_short")
    assert not signer.is_valid_secret("nope")
