"""Ingestion benchmark: ``POST /v1/events`` of the real service against a bare endpoint.

    python bench/ingest.py [--seconds 8] [--concurrency 16] [--batches 60]

Starts, on 127.0.0.1 only, the real service (``leadscore serve``: migrations, uvicorn, the
bundled rulesets, a fresh SQLite file) and a bare FastAPI app whose endpoint only parses and
validates the same canonical events, then loads both in the same run with httpx:

1. single events at saturation (``--concurrency`` requests in flight) for ``--seconds``:
   events/s, p50, p99, and the ratio of the service's rate to the bare endpoint's;
2. single events at half the service's saturated rate (paced): p50, p99;
3. batches of 100 events: events/s, p50, p99 per batch.

Then the same against PostgreSQL when ``LEADSCORE_TEST_DATABASE_URL`` is set (its schema
``public`` is dropped and recreated first: point it at a scratch database). Counts are bounded
and everything stops by itself. Events belong to 5,000 leads and arrive in time order per lead,
with a realistic mix of types, so the service scores each on its incremental path.

Targets (issue): single-event rate ≥ 30 % of the bare endpoint's with p99 < 30 ms at half that
load; batches ≥ 20,000 events/s on SQLite and ≥ 10,000 on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ADMIN_KEY = "bench-admin-key"
LEADS = 5000
MIX = [
    ("email.delivered", 25),
    ("email.opened", 22),
    ("page.viewed", 25),
    ("email.clicked", 8),
    ("content.downloaded", 5),
    ("form.submitted", 4),
    ("newsletter.subscribed", 3),
    ("webinar.attended", 2),
    ("demo.requested", 1),
    ("email.bounced", 1),
    ("email.unsubscribed", 1),
    ("chat.started", 3),
]
ATTRIBUTES = [
    {
        "role": "Purchasing manager",
        "industry": "manufacturing",
        "employees": 250,
        "annual_revenue_eur": 5_000_000,
        "source": "webinar",
    },
    {
        "role": "Responsabile acquisti",
        "industry": "informatica",
        "employees": 30,
        "annual_revenue_eur": 800_000,
        "source": "organic",
    },
    {"role": "intern", "industry": "retail", "employees": 5, "source": "purchased_list"},
]

BARE_APP = textwrap.dedent(
    '''
    """The same parsing as the service, and nothing else."""
    from typing import Any

    from fastapi import FastAPI, Request
    from pydantic import ValidationError

    from leadscore_api.ingest.events import CanonicalEvent

    app = FastAPI()


    def _one(item: Any) -> dict[str, Any]:
        try:
            event = CanonicalEvent.model_validate(item)
        except ValidationError as exc:
            return {"id": None, "status": "rejected", "error": str(exc)}
        return {"id": event.id, "status": "accepted", "lead_id": None, "error": None}


    @app.post("/v1/events")
    async def events(request: Request) -> dict[str, Any]:
        body = await request.json()
        items = body["events"] if "events" in body else [body]
        return {"results": [_one(item) for item in items]}
    '''
)


class EventFactory:
    """Canonical events in time order per lead (a global clock advancing 1 ms per event)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = datetime.now(UTC) - timedelta(days=2)
        self.counter = itertools.count()
        self.run = f"{seed}-{int(time.time())}"
        self.types = [name for name, weight in MIX for _ in range(weight)]

    def make(self) -> dict[str, Any]:
        n = next(self.counter)
        self.clock += timedelta(milliseconds=1)
        lead = self.rng.randrange(LEADS)
        kind = self.rng.choice(self.types)
        event: dict[str, Any] = {
            "id": f"bench-{self.run}-{n}",
            "type": kind,
            "occurred_at": self.clock.isoformat().replace("+00:00", "Z"),
            "lead": {"email": f"lead{lead}@bench{self.run}.example"},
            "source": "bench",
            "properties": {"url": "https://example.it/pricing" if n % 4 == 0 else "/blog"},
        }
        if kind == "form.submitted":
            event["attributes"] = ATTRIBUTES[lead % len(ATTRIBUTES)]
        return event


@dataclass
class Figures:
    label: str
    events: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"  {self.label:<34} {self.rate:>9.0f} events/s   p50 {self.pct(0.50):6.1f} ms"
            f"   p99 {self.pct(0.99):6.1f} ms   ({self.events} events, {self.errors} errors)"
        )


async def _load(
    base: str,
    factory: EventFactory,
    *,
    batch: int,
    concurrency: int,
    seconds: float,
    max_requests: int,
    rate: float | None = None,
) -> tuple[int, float, list[float], int]:
    """Send requests until ``seconds`` pass or ``max_requests`` are sent; paced if ``rate``."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:

        async def one(body: dict[str, Any]) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                response = await http.post("/v1/events", json=body)
                ok = response.status_code == 200 and all(
                    r["status"] == "accepted" for r in response.json()["results"]
                )
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            if not ok:
                errors += 1

        def body() -> dict[str, Any]:
            if batch == 1:
                return factory.make()
            return {"events": [factory.make() for _ in range(batch)]}

        if rate is None:

            async def worker() -> None:
                nonlocal sent
                while time.perf_counter() < deadline and sent < max_requests:
                    sent += 1
                    await one(body())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            interval = 1.0 / rate
            tasks: set[asyncio.Task[None]] = set()
            next_at = time.perf_counter()
            while time.perf_counter() < deadline and sent < max_requests:
                now = time.perf_counter()
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += interval
                sent += 1
                task = asyncio.create_task(one(body()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return sent * batch, elapsed, latencies, errors


def run_load(
    label: str,
    base: str,
    factory: EventFactory,
    *,
    batch: int,
    concurrency: int,
    seconds: float,
    max_requests: int,
    rate: float | None = None,
) -> Figures:
    events, elapsed, latencies, errors = asyncio.run(
        _load(
            base,
            factory,
            batch=batch,
            concurrency=concurrency,
            seconds=seconds,
            max_requests=max_requests,
            rate=rate,
        )
    )
    return Figures(label, events, elapsed, latencies, errors)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(base: str, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server at {base} exited with {process.returncode}")
        try:
            if httpx.get(base + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {base} did not start")


@contextmanager
def _process(command: list[str], cwd: Path, env: dict[str, str], ready: str) -> Iterator[str]:
    port = _free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, ready)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    env.update(values)
    return env


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def bench_backend(name: str, database_url: str, workdir: Path, args: argparse.Namespace) -> None:
    leadscore = str(Path(sys.executable).parent / "leadscore")
    env = _env(
        LEADSCORE_DATABASE_URL=database_url,
        LEADSCORE_ADMIN_API_KEY=ADMIN_KEY,
        LEADSCORE_RUN_WORKER="false",
    )
    (workdir / "bare.py").write_text(BARE_APP)
    bare_cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    service_cmd = [leadscore, "serve", "--host", "127.0.0.1", "--port", "{port}"]
    factory = EventFactory(seed=1)
    print(f"\n== {name}: {database_url.split('@')[-1]}")
    with _process(bare_cmd, workdir, _env(), "/docs") as bare_base:
        bare = run_load(
            "bare endpoint, single events",
            bare_base,
            factory,
            batch=1,
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=100_000,
        )
    with _process(service_cmd, workdir, env, "/readyz") as base:
        # warm-up: create the leads' first rows, JIT-free but caches and pools filled
        run_load(
            "warm-up",
            base,
            factory,
            batch=100,
            concurrency=4,
            seconds=30,
            max_requests=LEADS // 100,
        )
        single = run_load(
            "service, single events (saturated)",
            base,
            factory,
            batch=1,
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=100_000,
        )
        paced = run_load(
            f"service, single at {single.rate / 2:.0f}/s (half)",
            base,
            factory,
            batch=1,
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=100_000,
            rate=single.rate / 2,
        )
        batches = run_load(
            "service, batches of 100",
            base,
            factory,
            batch=100,
            concurrency=4,
            seconds=args.seconds,
            max_requests=args.batches,
        )
    print(bare.line())
    print(single.line())
    print(paced.line())
    print(batches.line())
    ratio = single.rate / bare.rate if bare.rate else float("nan")
    print(f"  ratio service/bare (single events): {ratio:.0%}   (target ≥ 30 %)")
    print(f"  p99 at half load: {paced.pct(0.99):.1f} ms   (target < 30 ms)")
    target = 20_000 if name == "SQLite" else 10_000
    print(f"  batches: {batches.rate:.0f} events/s   (target ≥ {target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Duration of each phase.")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight.")
    parser.add_argument("--batches", type=int, default=60, help="Batches of 100 to send.")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load generator: httpx, "
        f"{args.concurrency} in flight, {args.seconds:.0f} s per phase"
    )
    with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp:
        workdir = Path(tmp)
        bench_backend("SQLite", f"sqlite:///{workdir / 'bench.db'}", workdir, args)
    pg = os.environ.get("LEADSCORE_TEST_DATABASE_URL")
    if pg:
        _reset_postgres(pg)
        with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp:
            bench_backend("PostgreSQL", pg, Path(tmp), args)


if __name__ == "__main__":
    main()
