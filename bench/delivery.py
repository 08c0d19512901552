"""Delivery benchmark: throughput of one worker and enqueue-to-receiver latency at idle.

    python bench/delivery.py [--database-url URL] [--messages 3000] [--samples 200]

The receiver runs in its own process (``python -m tests.receiver``) so that it
does not share this process's GIL with the worker. Figures printed:

- throughput: messages per second one worker delivers (queue filled first, then drained);
- end to end: from ``POST /v1/events`` of an event that makes a new lead an MQL to the
  receiver getting ``lead.mql``, through a real ``leadscore serve``;
- latency: time from the start of the transaction that enqueues a transition (what the scoring
  path does when a lead crosses a threshold) to the receiver getting the request, at idle, p50 /
  p99 / max, once with the in-process worker woken on commit (``leadscore serve``) and once
  polling only (a separate ``leadscore worker``, every ``LEADSCORE_WORKER_POLL_SECONDS``).

Targets (issue): at least 300 deliveries per second per worker, latency under 1 s at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.worker import running_workers
from leadscore_api.scoring import Transition
from leadscore_api.service.delivery import enqueue_transitions
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.delivery_models import Subscription
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.migrate import upgrade_database

ENQUEUE_CHUNK = 500


def lead(n: int) -> dict[str, Any]:
    return {
        "id": f"lead_{n:06d}",
        "email": f"person{n}@example.it",
        "external_id": f"crm-{n}",
        "letter": "A",
        "score": 55,
        "tier": "warm",
        "stage": "mql",
        "owner": "north-team",
        "next_action": "priority_contact",
        "next_action_due": None,
    }


def enqueue(factory: sessionmaker[Session], n: int) -> int:
    with factory() as session, session.begin():
        return enqueue_transitions(
            session,
            lead=lead(n),
            transitions=[Transition("lead.mql", "lead", "mql", datetime.now(UTC), f"evt_{n}")],
            event_id=f"evt_{n}",
            ruleset_name="pmi-letter-score",
            ruleset_version=1,
            explanation={"score": {"fit": 30, "behaviour": 25}, "rules": ["role_manager"]},
        )


class RemoteReceiver:
    """The receiver subprocess and its ``/_stats``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.receiver"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.stats_url = self.url.rsplit("/", 1)[0] + "/_stats"
        self.http = httpx.Client(timeout=10)

    def stats(self, after: int) -> list[dict[str, Any]]:
        """The requests that arrived after the first ``after``."""
        answer = self.http.get(self.stats_url, params={"after": after}).json()
        requests: list[dict[str, Any]] = answer["requests"]
        return requests

    def count(self) -> int:
        count: int = self.http.get(self.stats_url, params={"after": 1 << 30}).json()["count"]
        return count

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def throughput(
    factory: sessionmaker[Session], settings: Settings, receiver: RemoteReceiver, messages: int
) -> float:
    start_count = receiver.count()
    for base in range(0, messages, ENQUEUE_CHUNK):
        with factory() as session, session.begin():
            for n in range(base, min(base + ENQUEUE_CHUNK, messages)):
                enqueue_transitions(
                    session,
                    lead=lead(n),
                    transitions=[Transition("lead.mql", "lead", "mql", utcnow(), f"evt_{n}")],
                    event_id=f"evt_{n}",
                    ruleset_name="pmi-letter-score",
                    ruleset_version=1,
                    explanation={"score": {"fit": 30}},
                )
    started = time.perf_counter()
    async with running_workers(factory, settings, wake_on_commit=False):
        deadline = started + 300
        while time.perf_counter() < deadline:
            if await asyncio.to_thread(receiver.count) - start_count >= messages:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    done = receiver.count() - start_count
    return done / elapsed


async def latency(
    factory: sessionmaker[Session],
    settings: Settings,
    receiver: RemoteReceiver,
    samples: int,
    *,
    wake: bool,
) -> list[float]:
    out: list[float] = []
    async with running_workers(factory, settings, wake_on_commit=wake):
        await asyncio.sleep(0.5)
        for n in range(samples):
            before = receiver.count()
            t0 = time.time()
            await asyncio.to_thread(enqueue, factory, 1_000_000 + n)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                requests = await asyncio.to_thread(receiver.stats, before)
                if requests:
                    out.append(requests[-1]["received_at"] - t0)
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.02 + (n % 7) * 0.013)  # idle gaps, out of phase with polling
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def end_to_end(url: str, receiver: RemoteReceiver, samples: int) -> list[float]:
    """From POST /v1/events of a threshold-crossing event to the receiver getting lead.mql,
    through a real ``leadscore serve`` (its in-process worker) on a fresh database."""
    import os

    port = _free_port()
    env = {
        **os.environ,
        "LEADSCORE_DATABASE_URL": url,
        "LEADSCORE_ADMIN_API_KEY": "bench-key",
        "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "leadscore"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    out: list[float] = []
    try:
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer bench-key"}) as http:
            for _ in range(200):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            created = http.post(
                "/v1/subscriptions", json={"url": receiver.url, "event_types": ["lead.mql"]}
            )
            created.raise_for_status()
            for n in range(samples):
                before = receiver.count()
                event = {
                    "id": f"e2e-{n}",
                    "type": "page.viewed",
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "lead": {"email": f"e2e{n}@example.it"},
                    "properties": {"url": "/pricing"},
                    "attributes": {
                        "role": "CEO",
                        "industry": "IT",
                        "employees": 300,
                        "annual_revenue_eur": 5_000_000,
                    },
                }
                t0 = time.time()
                http.post("/v1/events", json=event).raise_for_status()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    requests = receiver.stats(before)
                    if requests:
                        out.append(requests[-1]["received_at"] - t0)
                        break
                    time.sleep(0.005)
                time.sleep(0.02 + (n % 7) * 0.013)
    finally:
        server.terminate()
        server.wait(timeout=20)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.database_url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    if url.startswith("postgresql"):
        from sqlalchemy import text

        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    upgrade_database(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    settings = Settings(
        _env_file=None,
        database_url=url,
        webhook_allow_private_targets=True,
    )
    receiver = RemoteReceiver()
    try:
        with factory() as session, session.begin():
            now = utcnow()
            session.add(
                Subscription(
                    id=new_id("sub"),
                    url=receiver.url,
                    event_types=["*"],
                    filters={},
                    secret=generate_secret(),
                    enabled=True,
                    created_at=now,
                    updated_at=now,
                )
            )
        backend = engine.dialect.name
        print(f"backend: {backend}; receiver: {receiver.url}")
        rate = asyncio.run(throughput(factory, settings, receiver, args.messages))
        print(f"throughput: {rate:.0f} messages/s (one worker, {args.messages} messages)")
        for wake, label in ((True, "in-process worker, woken on commit"), (False, "polling only")):
            values = asyncio.run(latency(factory, settings, receiver, args.samples, wake=wake))
            print(
                f"latency ({label}, poll {settings.worker_poll_seconds:g} s, n={len(values)}): "
                f"p50 {statistics.median(values) * 1000:.1f} ms, "
                f"p99 {pct(values, 0.99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
            )
        e2e_url = f"sqlite:///{Path(tmp.name) / 'e2e.db'}" if backend == "sqlite" else url
        if backend == "postgresql":
            from sqlalchemy import text

            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
        values = end_to_end(e2e_url, receiver, args.samples)
        print(
            f"latency (POST /v1/events crossing MQL -> receiver, leadscore serve, n={len(values)}): "
            f"p50 {statistics.median(values) * 1000:.1f} ms, "
            f"p99 {pct(values, 0.99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
        )
    finally:
        receiver.close()
        engine.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
