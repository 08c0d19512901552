"""The SSRF guard against the tricks people use: number forms, IPv6, names, redirects, rebinding."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import auth
from tests.receiver import Receiver, Reply, receiving

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.delivery_models import DeliveryAttempt
from leadscore_api.storage.migrate import upgrade_database

from .conftest import add_messages, add_subscription, make_worker, message

HOSTILE_URLS = [
    # 127.0.0.1 written as one decimal number, in octal, in hex, and shortened
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f.0.0.1/hook",
    "http://0x7f000001/hook",
    "http://127.1/hook",
    "http://0/hook",
    # IPv6: loopback, unique local (fc00::/7), link-local, IPv4-mapped and NAT64 loopback
    "http://[::1]/hook",
    "http://[fc00::1]/hook",
    "http://[fd12:3456::1]:8080/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://[::]/hook",
    # names that resolve to loopback
    "http://localhost:8080/hook",
    "http://LocalHost/hook",
]


def _private_names_in_hosts_file() -> list[str]:
    """Names this machine's /etc/hosts maps to a non-public address (no network needed)."""
    names: list[str] = []
    hosts = Path("/etc/hosts")
    if not hosts.exists():
        return names
    for line in hosts.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        if not address.is_global:
            names.extend(name for name in fields[1:] if "." not in name or len(name) < 60)
    return sorted(set(names))[:5]


def _problem(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["errors"][0]["field"] == "url"
    return body


def test_hostile_targets_are_refused_when_subscribing(settings: Settings) -> None:
    upgrade_database(settings.database_url)
    strict = settings.model_copy(update={"webhook_allow_private_targets": False})
    key = settings.admin_api_key or ""
    urls = HOSTILE_URLS + [f"http://{name}/hook" for name in _private_names_in_hosts_file()]
    with TestClient(create_app(strict), headers=auth(key), raise_server_exceptions=False) as http:
        for url in urls:
            body = _problem(http.post("/v1/subscriptions", json={"url": url, "event_types": ["*"]}))
            assert "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS" in body["detail"], (url, body)
        created = http.post(
            "/v1/subscriptions", json={"url": "http://1.1.1.1/hook", "event_types": ["*"]}
        )
        assert created.status_code == 201, created.text
        # An update is checked like a creation.
        sub_id = created.json()["id"]
        _problem(http.patch(f"/v1/subscriptions/{sub_id}", json={"url": "http://2130706433/"}))
        assert http.get("/v1/subscriptions").json()["items"][0]["url"] == "http://1.1.1.1/hook"


def _attempt_errors(factory: sessionmaker[Session], message_id: str) -> list[str | None]:
    with factory() as session:
        query = select(DeliveryAttempt.error).where(DeliveryAttempt.message_id == message_id)
        return list(session.scalars(query))


def test_names_that_resolve_privately_at_send_time_are_not_called(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    """DNS rebinding: a name public when subscribed points at loopback when the message goes.

    The subscriptions are arranged directly: a creation through the API would be refused.
    """
    port = receiver.url.rsplit(":", 1)[1]
    messages = []
    for host in ("localhost", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]"):
        sub = add_subscription(db, f"http://{host}:{port}/hook")
        messages += add_messages(db, sub.id)
    asyncio.run(make_worker(db, allow_private_targets=False).run_once())
    assert receiver.requests == []
    for msg_id in messages:
        [error] = _attempt_errors(db, msg_id)
        assert error is not None and "loopback" in error
        assert message(db, msg_id).status == "pending"


def test_a_redirect_to_a_private_address_is_not_followed(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    with receiving() as inner:
        sub = add_subscription(db, receiver.url)
        messages = add_messages(db, sub.id, 2)
        receiver.plan(
            Reply(302, headers={"Location": inner.url + "/admin"}),
            Reply(307, headers={"Location": "http://169.254.169.254/latest/meta-data"}),
        )
        asyncio.run(make_worker(db).run_once())
        assert len(receiver.requests) == 2
        assert inner.requests == []
    statuses = sorted((message(db, m).status, message(db, m).last_status) for m in messages)
    assert statuses == [("pending", 302), ("pending", 307)]
