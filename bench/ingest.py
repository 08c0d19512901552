"""Ingestion benchmark: ``POST /v1/events`` of the real service, driven by ``wrk``.

    python bench/ingest.py [--seconds 10] [--connections 16] [--leads 2000] [--sqlite-only]

A Python client saturates near 400 requests/s and then measures itself, so the load comes from
``wrk`` (Debian package ``wrk``: ``apt-get install wrk``), a native load generator, with a Lua
script that writes each request's events (unique ids, in time order per lead). In the same run,
on 127.0.0.1 only, it loads:

1. a bare FastAPI app whose endpoint only parses and validates the same canonical events: the
   ceiling any real endpoint is compared with;
2. the real service (``leadscore serve``: migrations, uvicorn, the bundled rulesets, a fresh
   SQLite file, the delivery worker off), after creating ``--leads`` leads untimed:
   - single events in order on existing leads, saturated (``--connections`` in flight);
   - single events paced at half that rate: p50/p99;
   - batches of 100 events on 100 different leads (4 connections);
   - a late event on a lead with ``--history`` events against an in-order one on the same lead.

For each phase it prints the rate, p50/p99 latency, and the service process's CPU time per
event (user + system from ``/proc``, so the client's CPU is not counted), split between the
HTTP thread (the event loop) and the others (the group-commit writer, mostly); on PostgreSQL
also the CPU of the local server's processes per event. Then the same against
PostgreSQL when ``LEADSCORE_TEST_DATABASE_URL`` is set (its schema ``public`` is dropped and
recreated first: point it at a scratch database). Asserts nothing; prints figures.

Targets (issue "A fast core"): single events ≥ 0.30 of the bare endpoint's rate, p99 < 30 ms at
half that load; batches of 100 ≥ 8,000 events/s on SQLite and ≥ 4,000 on PostgreSQL; a late
event on a 10,000-event lead ≤ 10× an in-order one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
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
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

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

#: wrk's script: events in time order (1 ms apart), lead = counter mod LEADS, so consecutive
#: events of one lead are LEADS requests apart and never in flight together.
WRK_SCRIPT = textwrap.dedent(
    r"""
    local run = os.getenv("BENCH_RUN")
    local leads = tonumber(os.getenv("BENCH_LEADS"))
    local batch = tonumber(os.getenv("BENCH_BATCH"))
    local base = tonumber(os.getenv("BENCH_BASE_EPOCH"))
    local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
    local key = os.getenv("BENCH_KEY")
    local types = {"page.viewed", "email.opened", "email.delivered", "page.viewed",
                   "email.clicked", "email.opened", "page.viewed", "content.downloaded"}
    local counter = 0
    failed = 0  -- a global: done() reads it with thread:get
    local headers = {["Content-Type"] = "application/json",
                     ["Authorization"] = "Bearer " .. key}

    local function event()
      counter = counter + 1
      local t = base + counter / 1000
      local secs = math.floor(t)
      local ms = math.floor((t - secs) * 1000 + 0.5) % 1000
      local ts = os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%03dZ", ms)
      local kind = types[(counter % #types) + 1]
      return string.format(
        '{"id":"w-%s-%d","type":"%s","occurred_at":"%s","lead":{"email":"lead%d@bench.example"},' ..
        '"source":"bench","properties":{"url":"https://example.it/%s"}}',
        run, counter, kind, ts, counter % leads, counter % 4 == 0 and "prezzi" or "blog")
    end

    request = function()
      local body
      if batch == 1 then
        body = event()
      else
        local parts = {}
        for i = 1, batch do parts[i] = event() end
        body = '{"events":[' .. table.concat(parts, ",") .. ']}'
      end
      return wrk.format("POST", "/v1/events", headers, body)
    end

    if pause > 0 then
      -- Random pauses (mean `pause`) so the connections do not fire in lockstep: traffic from
      -- many independent senders, not bursts of one request per connection at once.
      math.randomseed(os.time())
      delay = function() return math.random() * 2 * pause end
    end

    response = function(status, hdrs, body)
      if status ~= 200 or string.find(body, '"rejected"', 1, true) then
        failed = failed + 1
      end
    end

    local threads = {}
    setup = function(thread) table.insert(threads, thread) end

    done = function(summary, latency, requests)
      local failures = 0
      for _, thread in ipairs(threads) do failures = failures + thread:get("failed") end
      io.write(string.format(
        'RESULT {"requests":%d,"seconds":%f,"p50_ms":%f,"p99_ms":%f,"failed":%d,' ..
        '"socket_errors":%d}\n',
        summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, failures,
        summary.errors.connect + summary.errors.read + summary.errors.write +
        summary.errors.status + summary.errors.timeout))
    end
    """
)


@dataclass
class Phase:
    label: str
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu_seconds: float | None
    #: CPU seconds of the service's main thread (the event loop: HTTP, parsing, answers).
    http_cpu_seconds: float | None = None
    #: CPU seconds of the local PostgreSQL server's processes (None on SQLite).
    database_cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        cpu = (
            f"   service CPU {self.cpu_seconds / self.events * 1e6:7.0f} µs/event"
            if self.cpu_seconds is not None and self.events
            else ""
        )
        if cpu and self.http_cpu_seconds is not None:
            http = self.http_cpu_seconds / self.events * 1e6
            rest = (self.cpu_seconds or 0.0) / self.events * 1e6 - http
            cpu += f" (HTTP thread {http:.0f}, writer and other threads {rest:.0f})"
        if cpu and self.database_cpu_seconds is not None:
            cpu += f", PostgreSQL server {self.database_cpu_seconds / self.events * 1e6:.0f}"
        return (
            f"  {self.label:<38} {self.rate:>8.0f} events/s   p50 {self.p50_ms:6.1f} ms"
            f"   p99 {self.p99_ms:6.1f} ms{cpu}   ({self.events} events, {self.failed} failed)"
        )


def process_cpu(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (or of one of its threads), from /proc."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def postgres_cpu() -> float:
    """CPU seconds of every local ``postgres`` process (the server the service talks to, when
    it runs on this machine; background workers included)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def run_wrk(
    label: str,
    base: str,
    script: Path,
    *,
    seconds: float,
    connections: int,
    batch: int,
    leads: int,
    run: str,
    epoch: float,
    delay_ms: float = 0.0,
    pid: int | None = None,
    key: str = ADMIN_KEY,
    postgres: bool = False,
) -> Phase:
    env = {
        **os.environ,
        "BENCH_RUN": run,
        "BENCH_LEADS": str(leads),
        "BENCH_BATCH": str(batch),
        "BENCH_BASE_EPOCH": str(epoch),
        "BENCH_DELAY_MS": str(delay_ms),
        "BENCH_KEY": key,
    }
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        base,
    ]
    cpu_before = process_cpu(pid) if pid else None
    http_before = process_cpu(pid, pid) if pid else None
    database_before = postgres_cpu() if pid and postgres else None
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    cpu_after = process_cpu(pid) if pid else None
    http_after = process_cpu(pid, pid) if pid else None
    database_after = postgres_cpu() if pid and postgres else None
    line = next((row for row in completed.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{completed.stdout}\n{completed.stderr}")
    figures = json.loads(line.removeprefix("RESULT "))
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    http = http_after - http_before if http_before is not None and http_after is not None else None
    database = (
        database_after - database_before
        if database_before is not None and database_after is not None
        else None
    )
    return Phase(
        label,
        figures["requests"] * batch,
        figures["seconds"],
        figures["p50_ms"],
        figures["p99_ms"],
        figures["failed"] + figures["socket_errors"],
        cpu,
        http,
        database,
    )


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
def _process(
    command: list[str], cwd: Path, env: dict[str, str], ready: str
) -> Iterator[tuple[str, int]]:
    port = _free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, ready)
        yield base, process.pid
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


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _post(http: httpx.Client, body: dict[str, Any]) -> float:
    """Send one request; its wall-clock seconds. Fails loudly on anything but all accepted."""
    t0 = time.perf_counter()
    response = http.post("/v1/events", json=body)
    elapsed = time.perf_counter() - t0
    results = response.json()["results"] if response.status_code == 200 else None
    if results is None or any(r["status"] != "accepted" for r in results):
        raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:300]}")
    return elapsed


def create_key(base: str) -> str:
    """A stored key with ``events:write`` and ``leads:read``, as a real integration uses
    (the bootstrap admin key would skip the key check the service does on every request)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        response = http.post(
            "/v1/api-keys", json={"name": "bench", "scopes": ["events:write", "leads:read"]}
        )
        response.raise_for_status()
        key: str = response.json()["key"]
        return key


def seed_event(n: int, moment: datetime) -> dict[str, Any]:
    """Lead ``n``'s first event: a form with the attributes that give it a letter. The same
    leads for every benchmark that drives these events (``bench/inproc.py`` too)."""
    return {
        "id": f"seed-{n}",
        "type": "form.submitted",
        "occurred_at": _iso(moment),
        "lead": {"email": f"lead{n}@bench.example"},
        "source": "bench",
        "attributes": {
            "role": "Responsabile acquisti" if n % 3 else "impiegato",
            "industry": "manifatturiero",
            "employees": 250,
            "annual_revenue_eur": 5_000_000,
        },
    }


def create_leads(base: str, leads: int, moment: datetime) -> None:
    """Each lead's first event (a form with attributes), in batches of 100, untimed."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        for start in range(0, leads, 100):
            events = [seed_event(n, moment) for n in range(start, min(start + 100, leads))]
            _post(http, {"events": events})


def group_sizes(base: str) -> str:
    """Requests per shared transaction since the service started, from /metrics."""
    values: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("leadscore_ingest_groups_total", "leadscore_ingest_grouped_requests_total"):
            values[name] = float(value)
    groups = values.get("leadscore_ingest_groups_total", 0.0)
    requests = values.get("leadscore_ingest_grouped_requests_total", 0.0)
    share = requests / groups if groups else float("nan")
    return f"group commit: {requests:.0f} requests in {groups:.0f} transactions, {share:.1f} each"


def late_event_cost(base: str, history: int, moment: datetime, samples: int) -> tuple[float, float]:
    """Median seconds of an in-order event and of a late one on a lead with ``history`` events.

    The late event happened an hour before the lead's last stored event, so the service must
    put it back in its place in time; the in-order one happened after the last.
    """
    email = "old.customer@bench.example"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        for start in range(0, history, 100):
            events = [
                {
                    "id": f"hist-{n}",
                    "type": "page.viewed" if n % 3 else "email.opened",
                    "occurred_at": _iso(moment + timedelta(minutes=n)),
                    "lead": {"email": email},
                    "properties": {"url": "/blog"},
                }
                for n in range(start, min(start + 100, history))
            ]
            _post(http, {"events": events})
        last = moment + timedelta(minutes=history)
        in_order: list[float] = []
        late: list[float] = []
        for n in range(samples):
            in_order.append(
                _post(
                    http,
                    {
                        "id": f"inorder-{n}",
                        "type": "page.viewed",
                        "occurred_at": _iso(last + timedelta(seconds=n + 1)),
                        "lead": {"email": email},
                        "properties": {"url": "/blog"},
                    },
                )
            )
            late.append(
                _post(
                    http,
                    {
                        "id": f"late-{n}",
                        "type": "page.viewed",
                        "occurred_at": _iso(last - timedelta(minutes=60, seconds=n)),
                        "lead": {"email": email},
                        "properties": {"url": "/blog"},
                    },
                )
            )
    return statistics.median(in_order), statistics.median(late)


def bench_backend(name: str, database_url: str, workdir: Path, args: argparse.Namespace) -> None:
    leadscore = str(Path(sys.executable).parent / "leadscore")
    env = _env(
        LEADSCORE_DATABASE_URL=database_url,
        LEADSCORE_ADMIN_API_KEY=ADMIN_KEY,
        LEADSCORE_RUN_WORKER="false",
        # The bare endpoint runs without an access log too: both compared on the same footing.
        LEADSCORE_ACCESS_LOG="false",
    )
    if args.writers:
        env["LEADSCORE_INGEST_WRITERS"] = str(args.writers)
    script = workdir / "events.lua"
    script.write_text(WRK_SCRIPT)
    (workdir / "bare.py").write_text(BARE_APP)
    bare_cmd = [
        sys.executable,
        *("-m", "uvicorn", "bare:app", "--host", "127.0.0.1", "--port", "{port}"),
        *("--log-level", "warning", "--no-access-log"),
    ]
    service_cmd = [leadscore, "serve", "--host", "127.0.0.1", "--port", "{port}"]
    start = datetime.now(UTC) - timedelta(days=20)
    day = 86400.0
    run = str(int(time.time()))
    common: dict[str, Any] = {"seconds": args.seconds, "leads": args.leads, "run": run}
    print(f"\n== {name}: {database_url.split('@')[-1]}")
    with _process(bare_cmd, workdir, _env(), "/docs") as (bare_base, bare_pid):
        bare = run_wrk(
            "bare endpoint, single events",
            bare_base,
            script,
            connections=args.connections,
            batch=1,
            epoch=start.timestamp(),
            pid=bare_pid,
            **common,
        )
    print(bare.line())
    with _process(service_cmd, workdir, env, "/readyz") as (base, pid):
        create_leads(base, args.leads, start)
        common["key"] = create_key(base)
        single = run_wrk(
            "service, single events (saturated)",
            base,
            script,
            connections=args.connections,
            batch=1,
            epoch=start.timestamp() + 1 * day,
            pid=pid,
            postgres=name == "PostgreSQL",
            **{**common, "run": run + "s"},
        )
        print(single.line())
        # wrk has no fixed rate: each connection pauses at random between requests. The pause
        # that gives half the saturated rate is found with two short calibration runs.
        target = single.rate / 2
        pause = args.connections / target * 1000
        for attempt in range(2):
            probe = run_wrk(
                "calibration",
                base,
                script,
                connections=args.connections,
                batch=1,
                epoch=start.timestamp() + (1.3 + attempt / 10) * day,
                delay_ms=pause,
                **{**common, "seconds": 3, "run": f"{run}c{attempt}"},
            )
            pause *= probe.rate / target
        paced = run_wrk(
            f"service, single at ~{target:.0f}/s (half)",
            base,
            script,
            connections=args.connections,
            batch=1,
            epoch=start.timestamp() + 2 * day,
            pid=pid,
            postgres=name == "PostgreSQL",
            delay_ms=pause,
            **{**common, "run": run + "p"},
        )
        print(paced.line())
        batches = run_wrk(
            "service, batches of 100",
            base,
            script,
            connections=4,
            batch=100,
            epoch=start.timestamp() + 3 * day,
            pid=pid,
            postgres=name == "PostgreSQL",
            **{**common, "run": run + "b"},
        )
        print(batches.line())
        print(f"  {group_sizes(base)}")
        in_order, late = late_event_cost(base, args.history, start + timedelta(days=4), 15)
    ratio = single.rate / bare.rate if bare.rate else float("nan")
    print(f"  ratio service/bare (single events): {ratio:.2f}   (target ≥ 0.30)")
    print(f"  p99 at half load: {paced.p99_ms:.1f} ms   (target < 30 ms)")
    goal = 8_000 if name == "SQLite" else 4_000
    print(f"  batches: {batches.rate:.0f} events/s   (target ≥ {goal})")
    print(
        f"  lead with {args.history} events: in-order {in_order * 1000:.1f} ms, late"
        f" {late * 1000:.1f} ms, {late / in_order:.1f}x   (target ≤ 10x; Python client, sequential)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each phase.")
    parser.add_argument("--connections", type=int, default=16, help="Requests in flight.")
    parser.add_argument("--leads", type=int, default=2000, help="Existing leads loaded.")
    parser.add_argument("--history", type=int, default=10_000, help="Events of the old lead.")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--pg-only", action="store_true")
    parser.add_argument(
        "--writers", type=int, default=0, help="LEADSCORE_INGEST_WRITERS (default: the service's)."
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian package)")
    load = os.getloadavg()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average"
        f" {load[0]:.2f} {load[1]:.2f}; wrk 1 thread, {args.connections} connections,"
        f" {args.seconds:.0f} s per phase"
    )
    if not args.pg_only:
        with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp:
            workdir = Path(tmp)
            bench_backend("SQLite", f"sqlite:///{workdir / 'bench.db'}", workdir, args)
    pg = os.environ.get("LEADSCORE_TEST_DATABASE_URL")
    if pg and not args.sqlite_only:
        _reset_postgres(pg)
        with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp:
            bench_backend("PostgreSQL", pg, Path(tmp), args)


if __name__ == "__main__":
    main()
