"""Inbound webhook benchmark: a signed SendGrid batch of 1,000 events vs the same events on
``POST /v1/events``.

    python bench/webhooks.py [--database-url URL] [--rounds 5] [--events 1000] [--leads 200]

Each round posts one SendGrid Event Webhook request (a JSON array of ``--events`` events, signed
with a freshly generated ECDSA P-256 key, exactly as SendGrid signs) to
``/v1/webhooks/sendgrid``, and the same events, translated to canonical events (raw payload
included), as one ``{"events": [...]}`` batch to ``/v1/events``. Event ids and leads are fresh
on both sides in every round, so both do the full work (store, resolve leads, score, history);
the order alternates between rounds. Signing happens before the clock starts: it is the
platform's cost, not ours. The app runs in process (no network) on SQLite by default.

Figures printed: events/s of each endpoint (median over the rounds), and the ratio
webhook / events in the same run. Target (issue): the webhook at batch speed, i.e. a ratio
close to 1 (the extra work is one ECDSA verification and the SendGrid translation).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.sources import sendgrid
from leadscore_api.storage.migrate import upgrade_database

ADMIN_KEY = "bench-admin-key"
WEBHOOK_PATH = "/v1/webhooks/sendgrid"
JSON = {"Content-Type": "application/json"}
EVENT_KINDS = ("delivered", "open", "click", "open", "processed")


def sendgrid_batch(tag: str, count: int, leads: int, now: int) -> list[dict[str, Any]]:
    """``count`` SendGrid events over ``leads`` recipients, in SendGrid's documented shape."""
    batch = []
    for i in range(count):
        kind = EVENT_KINDS[i % len(EVENT_KINDS)]
        event: dict[str, Any] = {
            "email": f"{tag}-lead{i % leads}@example.it",
            "timestamp": now - 600 + (i * 7) % 590,
            "smtp-id": f"<{tag}.{i}@ismtpd-555>",
            "event": kind,
            "category": ["promo", "novembre"],
            "sg_event_id": f"{tag}-{i:05d}",
            "sg_message_id": f"{tag}.{i // 5}.filter0001.16648.5515E0B88.0",
        }
        if kind == "click":
            event["url"] = "https://www.example.it/pricing"
        if kind in ("open", "click"):
            event["useragent"] = "Mozilla/5.0"
            event["ip"] = "203.0.113.7"
        batch.append(event)
    return batch


def canonical_batch(body: bytes) -> dict[str, Any]:
    """The same events as the webhook would store them, as a ``POST /v1/events`` body."""
    events = [item for item in sendgrid.parse(body) if isinstance(item, CanonicalEvent)]
    return {"events": [event.model_dump(mode="json") for event in events]}


def rate(client: TestClient, path: str, body: bytes, headers: dict[str, str], count: int) -> float:
    """Events per second of one POST, checking that every event was accepted."""
    started = time.perf_counter()
    response = client.post(path, content=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all(r["status"] == "accepted" for r in results), results[:3]
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--leads", type=int, default=200)
    args = parser.parse_args()
    count: int = args.events

    private = ec.generate_private_key(ec.SECP256R1())
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench-webhooks.db'}"
        settings = Settings(
            _env_file=None,
            database_url=url,
            rules_dir=BUNDLED_RULES_DIR,
            admin_api_key=ADMIN_KEY,
            run_worker=False,
            max_batch_size=max(1000, count),
            webhook_sendgrid_secret=base64.b64encode(public_der).decode(),
        )
        upgrade_database(url)
        app = create_app(settings)
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            webhook_rates: list[float] = []
            events_rates: list[float] = []
            body_sizes: list[int] = []
            for round_no in range(args.rounds):
                now = int(time.time())
                hook_body = json.dumps(
                    sendgrid_batch(f"wh{round_no}", count, args.leads, now)
                ).encode()
                body_sizes.append(len(hook_body))
                timestamp = str(now)
                signature = private.sign(timestamp.encode() + hook_body, ec.ECDSA(hashes.SHA256()))
                hook_headers = {
                    "Content-Type": "application/json",
                    "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                    "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
                }
                events_body = json.dumps(
                    canonical_batch(
                        json.dumps(sendgrid_batch(f"ev{round_no}", count, args.leads, now)).encode()
                    )
                ).encode()

                if round_no % 2 == 0:
                    webhook_rates.append(rate(client, WEBHOOK_PATH, hook_body, hook_headers, count))
                    events_rates.append(rate(client, "/v1/events", events_body, JSON, count))
                else:
                    events_rates.append(rate(client, "/v1/events", events_body, JSON, count))
                    webhook_rates.append(rate(client, WEBHOOK_PATH, hook_body, hook_headers, count))

    webhook = statistics.median(webhook_rates)
    events = statistics.median(events_rates)
    backend = url.split(":", 1)[0]
    print(f"inbound webhooks, {count} events per request, {args.rounds} rounds, {backend}")
    print(f"  signed SendGrid body: {statistics.median(body_sizes) / 1024:.0f} KiB")
    print(f"  POST /v1/webhooks/sendgrid : {webhook:8.0f} events/s (median)")
    print(f"  POST /v1/events (batch)    : {events:8.0f} events/s (median)")
    print(f"  ratio webhook / events     : {webhook / events:8.2f}")


if __name__ == "__main__":
    main()
