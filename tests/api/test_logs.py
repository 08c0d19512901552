"""The service's logs on a realistic run: JSON lines, request ids, lead ids, no person or secret."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.exc import IntegrityError
from tests.conftest import TEST_ADMIN_KEY, auth, make_settings
from tests.delivery.conftest import qualified_stream
from tests.receiver import Reply, receiving
from tests.server import free_port

from leadscore_api import logs
from leadscore_api.app import create_app
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories import leads as leads_repo

FORM_TOKEN = "form-token-Zq8nX4"
EMAIL = "giulia.bianchi@acciaierie.it"
OTHER_EMAIL = "Marco.Verdi@Fonderia.it"
SUB_PASSWORD = "basic-pass-Hk29"
SUB_QUERY_TOKEN = "query-token-Lp77"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line of the process, as ``leadscore serve`` writes them (JSON, DEBUG)."""
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream=stream)
    try:
        yield stream
    finally:
        logs.unconfigure()


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    # As `leadscore serve` runs uvicorn: our logging, our access log.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def test_a_realistic_run_logs_json_with_ids_and_no_email_or_secret(
    database_url: str, captured: io.StringIO
) -> None:
    settings = make_settings(
        database_url,
        run_worker=True,
        webhook_form_secret=FORM_TOKEN,
        delivery_retry_delays="0,0.2",
        worker_poll_seconds=0.05,
    )
    upgrade_database(settings.database_url)
    secrets = [TEST_ADMIN_KEY, FORM_TOKEN, SUB_PASSWORD, SUB_QUERY_TOKEN]
    with receiving() as receiver:
        receiver.default = Reply(500, body=b"receiver is down")
        server, thread, base = _serve(create_app(settings))
        try:
            with httpx.Client(base_url=base, headers=auth(TEST_ADMIN_KEY), timeout=30) as http:
                key = http.post(
                    "/v1/api-keys", json={"name": "crm", "scopes": ["leads:read"]}
                ).json()["key"]
                secrets.append(key)
                hook = receiver.url.replace("http://", f"http://crm:{SUB_PASSWORD}@")
                sub = http.post(
                    "/v1/subscriptions",
                    json={"url": f"{hook}/hook?token={SUB_QUERY_TOKEN}", "event_types": ["*"]},
                )
                assert sub.status_code == 201, sub.text
                secrets.append(sub.json()["secret"])
                given_id = "trace-4f1c2a"
                ingested = http.post(
                    "/v1/events",
                    json={"events": qualified_stream(EMAIL)},
                    headers={"X-Request-ID": given_id},
                )
                assert ingested.headers["x-request-id"] == given_id
                lead_id = ingested.json()["results"][0]["lead_id"]
                form = http.post(
                    f"/v1/webhooks/form?token={FORM_TOKEN}",
                    json={"email": OTHER_EMAIL, "ruolo": "CEO"},
                    headers={"Authorization": ""},
                )
                assert form.status_code == 200, form.text
                generated = form.headers["x-request-id"]
                assert generated and generated != given_id
                assert http.get("/v1/leads", params={"email": EMAIL}).json()["items"]
                assert http.get("/v1/leads", params={"email": "not an address"}).status_code == 422
                assert http.get(f"/dashboard/login?token={key}").status_code == 303
                assert http.post("/v1/events", content=b"{").status_code == 400
                # A forged id (a line break, to fake a log line) is replaced, not echoed.
                forged = http.get("/healthz", headers={"X-Request-ID": "x\ty"})
                assert forged.headers["x-request-id"] != "x\ty"
            # The failing delivery: tried, retried, given up (and logged).
            assert receiver.wait_for(2, timeout=15)
            deadline = time.monotonic() + 10
            while "failed after" not in captured.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            server.should_exit = True
            thread.join(timeout=20)

    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        assert {"event", "level", "timestamp", "logger"} <= line.keys(), line
    requests = [line for line in lines if line["logger"] == "leadscore.access"]
    assert {line["route"] for line in requests} >= {"/v1/events", "/v1/webhooks/{source}"}
    assert all(line.get("request_id") for line in requests)
    traced = [line for line in lines if line.get("request_id") == given_id]
    assert {line["event"] for line in traced} >= {"request", "lead transitions"}
    assert any(line.get("lead_id") == lead_id for line in traced)
    assert any(line.get("request_id") == generated for line in lines)
    assert any("failed after" in line["event"] for line in lines)

    lowered = text.lower()
    for secret in secrets:
        assert secret.lower() not in lowered, "a secret is in the logs"
    for email in (EMAIL, OTHER_EMAIL, "acciaierie.it", "fonderia.it"):
        assert email.lower() not in lowered, "an email is in the logs"


def test_database_errors_name_no_email_in_the_log(database_url: str, captured: io.StringIO) -> None:
    """An unexpected database error is logged with its traceback (as the 500 handler does):
    neither SQLAlchemy's parameter list nor PostgreSQL's DETAIL may put an email there."""
    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        now = datetime.now(UTC)
        row = {"kind": "email", "value": EMAIL, "lead_id": "lead_x", "created_at": now}
        with make_session_factory(engine)() as session:
            session.add(Lead(id="lead_x", email=EMAIL, created_at=now, updated_at=now))
            session.flush()
            leads_repo.insert_identities(session, [row])
            with pytest.raises(IntegrityError) as fast:
                leads_repo.insert_identities(session, [row])
        with make_session_factory(engine)() as session:
            session.add(Lead(id="lead_y", email=EMAIL, created_at=now, updated_at=now))
            session.add(Lead(id="lead_y", email=EMAIL, created_at=now, updated_at=now))
            with pytest.raises(IntegrityError) as orm:
                session.flush()
    finally:
        engine.dispose()
    log = logging.getLogger("leadscore.api")
    for error in (fast.value, orm.value):
        assert "parameters hidden" in str(error)
        log.error("unhandled error on POST /v1/events", exc_info=error)
    text = captured.getvalue()
    assert text.count("IntegrityError") >= 2
    assert EMAIL not in text and "acciaierie" not in text
