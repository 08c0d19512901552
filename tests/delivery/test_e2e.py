"""The real ``leadscore serve`` / ``leadscore worker`` processes, killed and restarted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool
from standardwebhooks.webhooks import Webhook
from tests.receiver import Receiver
from tests.server import free_port

from leadscore_api.storage.delivery_models import OutboxMessage

from .conftest import qualified_stream

pytestmark = pytest.mark.e2e

LEADSCORE = shutil.which("leadscore", path=str(Path(sys.executable).parent)) or "leadscore"
ADMIN = {"Authorization": "Bearer e2e-admin"}


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    env.update(
        {
            "LEADSCORE_DATABASE_URL": database_url,
            "LEADSCORE_ADMIN_API_KEY": "e2e-admin",
            "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "LEADSCORE_DELIVERY_RETRY_DELAYS": ",".join(["0"] + ["0.5"] * 40),
            "LEADSCORE_DELIVERY_TIMEOUT_SECONDS": "2",
            "LEADSCORE_WORKER_POLL_SECONDS": "0.1",
        }
    )
    env.update(extra)
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [LEADSCORE, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "leadscore serve exited early"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("leadscore serve did not become ready")


def _message_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(select(OutboxMessage.id)))
    finally:
        engine.dispose()


def test_receiver_down_while_service_is_killed_gets_everything_after_restart(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    receiver_port = free_port()
    receiver = Receiver(port=receiver_port)  # not started: the receiver is down
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]

    with process(serve, env, tmp_path) as proc:
        _wait_ready(base, proc)
        with httpx.Client(base_url=base, headers=ADMIN, timeout=30) as http:
            created = http.post(
                "/v1/subscriptions", json={"url": receiver.url, "event_types": ["*"]}
            ).json()
            for n in range(3):
                events = qualified_stream(f"outage{n}@x.it")
                assert http.post("/v1/events", json={"events": events}).status_code == 200
            # The worker inside serve keeps trying: attempts fail while the receiver is down.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                items = http.get("/v1/deliveries", params={"limit": 500}).json()["items"]
                if items and all(m["attempts"] >= 1 for m in items):
                    break
                time.sleep(0.2)
            assert items and all(m["status"] == "pending" for m in items)
            assert all(m["last_error"] for m in items)
        proc.send_signal(signal.SIGKILL)  # a crash: no graceful shutdown
        proc.wait(timeout=10)

    expected = _message_ids(database_url)
    assert len(expected) >= 6
    receiver.start()
    try:
        with process(serve, env, tmp_path) as proc:
            _wait_ready(base, proc)
            assert receiver.wait_for(len(expected), timeout=60, delivered=True)
        got = receiver.delivered()
        # Every message queued before the crash arrives, with its webhook-id (at least once);
        # the restarted worker may add time-driven ones (the hand-over SLA ran out meanwhile).
        assert expected <= {r.webhook_id for r in got}
        for r in got:
            Webhook(created["secret"]).verify(r.body, r.headers)
    finally:
        receiver.stop()


def test_worker_command_delivers_alone(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_env = _env(database_url, LEADSCORE_RUN_WORKER="false")
    with Receiver() as receiver:
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        with process(serve, serve_env, tmp_path) as proc:
            _wait_ready(base, proc)
            with httpx.Client(base_url=base, headers=ADMIN, timeout=30) as http:
                http.post("/v1/subscriptions", json={"url": receiver.url, "event_types": ["*"]})
                events = qualified_stream("worker@x.it")
                assert http.post("/v1/events", json={"events": events}).status_code == 200
            time.sleep(0.5)
            assert receiver.requests == []  # no worker in serve
            with process(["worker"], _env(database_url), tmp_path) as worker:
                expected = _message_ids(database_url)
                assert receiver.wait_for(len(expected), timeout=30, delivered=True)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=20) == 0
        assert {r.webhook_id for r in receiver.delivered()} == expected
