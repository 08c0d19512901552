"""Load and faults on PostgreSQL: two replicas and two workers on one database, checked.

The machinery of ``bench/soak.py`` (the full run) and ``tests/soak/test_soak_small.py`` (the CI
run). Everything is real: a throwaway PostgreSQL cluster (:mod:`tests.soak.cluster`), two
``leadscore serve`` replicas without delivery loops, two ``leadscore worker`` processes, and
the loopback receiver (``python -m tests.receiver``) logging every request to a file. Concurrent
clients send events of many leads, in batches, with duplicates (also to the other replica) and
late events (older ``occurred_at`` sent after newer ones). Faults happen in the middle: the
receiver down, a worker and a replica killed with SIGKILL, PostgreSQL stopped and started.

Then it checks what a user would: every lead's letter, score, tier and stage equal an offline
replay of its events by the scoring core; no event stored or applied twice; every outbox
message delivered and in the receiver's log, never two deliveries of one message at once; one
``lead.<stage>`` message per lead and stage; while the database was down the replicas said
503 with Retry-After, and no request ever got a 500.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool
from tests.server import free_port
from tests.soak.cluster import Cluster, wait_until

from leadscore_api.config import BUNDLED_RULES_DIR
from leadscore_api.scoring import ScoringEvent, load_rules_dir
from leadscore_api.storage.db import make_engine
from leadscore_api.storage.migrate import upgrade_database

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "soak-admin-key"
PRIMARY = "pmi-letter-score"
FAULTS = frozenset({"pg", "kill", "receiver"})

#: Lead profiles (first event's attributes): letters A to D and a B2C lead.
PROFILES: list[dict[str, Any]] = [
    {
        "role": "purchasing manager",
        "employees": 250,
        "industry": "manufacturing",
        "annual_revenue_eur": 5_000_000,
    },
    {
        "role": "HR manager",
        "employees": 250,
        "industry": "manufacturing",
        "annual_revenue_eur": 5e6,
    },
    {"role": "analyst", "employees": 80, "industry": "software", "annual_revenue_eur": 2_000_000},
    {"role": "intern", "employees": 5, "industry": "retail"},
    {
        "segment": "b2c",
        "age": 33,
        "region": "lombardia",
        "marital_status": "married",
        "interests": "crm",
    },
]
#: (type, properties) of the behaviour events, drawn at random.
ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("page.viewed", {"url": "https://shop.example/pricing"}),
    ("page.viewed", {"url": "https://shop.example/blog/news"}),
    ("email.opened", {"message_id": "m1"}),
    ("email.clicked", {"message_id": "m2"}),
    ("content.downloaded", {"title": "guide"}),
    ("webinar.attended", {"asked_questions": True}),
    ("newsletter.subscribed", {}),
    ("email.unsubscribed", {}),
    ("email.bounced", {}),
]
#: The HR managers (fit 40, letter B) hover around the MQL threshold (score 50): small gains and
#: penalties. A late penalty then often moves the moment they became MQL, or undoes it until a
#: later event: the case where subscribers must not hear ``lead.mql`` twice.
HOVERING = 1
HOVER_ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("page.viewed", {"url": "https://shop.example/pricing"}),
    ("email.opened", {"message_id": "m1"}),
    ("content.downloaded", {"title": "guide"}),
    ("email.unsubscribed", {}),
    ("email.bounced", {}),
]
#: Share of the hovering leads' penalties that arrive late.
HOVER_LATE_RATE = 0.4
_HOVERING_SUFFIX = "@hover.soak.example"


@dataclass
class SoakConfig:
    events: int = 1500
    leads: int = 60
    clients: int = 4
    faults: frozenset[str] = FAULTS
    batch_max: int = 10
    duplicate_rate: float = 0.03
    late_rate: float = 0.05
    pg_down_seconds: float = 2.0
    receiver_down_seconds: float = 2.0
    seed: int = 14
    drain_timeout: float = 90.0
    #: Seconds a receiver takes to answer: long enough for two deliveries of one message at
    #: once to overlap in its log if the workers ever did that.
    receiver_delay: float = 0.005
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """One service process, restartable, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: CPU seconds of the instances that were killed, added to the live one's at the end.
        self.cpu_before = 0.0

    def start(self) -> None:
        out = (self.workdir / f"{self.name}.log").open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        self.starts += 1

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.cpu_before += self.cpu_seconds()
        self.popen.send_signal(sig)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def _proc(self, entry: str) -> str:
        assert self.popen is not None
        return Path(f"/proc/{self.popen.pid}/{entry}").read_text()

    def rss_mib(self) -> float:
        for line in self._proc("status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        fields = self._proc("stat").rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def _leadscore() -> str:
    return str(Path(sys.executable).parent / "leadscore")


def service_env(database_url: str) -> dict[str, str]:
    """What every replica and worker reads: one database, short delivery schedule for a run."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")},
        "LEADSCORE_DATABASE_URL": database_url,
        "LEADSCORE_RULES_DIR": str(BUNDLED_RULES_DIR),
        "LEADSCORE_ADMIN_API_KEY": ADMIN_KEY,
        "LEADSCORE_RUN_WORKER": "false",
        "LEADSCORE_ACCESS_LOG": "false",
        "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        # Offsets from the first attempt (not gaps): every 2 s for two minutes, longer than any
        # receiver outage of the run, so a message is retried through it, never dead-lettered.
        "LEADSCORE_DELIVERY_RETRY_DELAYS": ",".join(
            ["0", "0.5", "1"] + [str(2 * i) for i in range(1, 61)]
        ),
        "LEADSCORE_DELIVERY_TIMEOUT_SECONDS": "3",
        "LEADSCORE_WORKER_POLL_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
    }


@dataclass
class Fleet:
    """The processes of a run: replicas, workers, receiver."""

    replicas: list[Proc]
    replica_urls: list[str]
    workers: list[Proc]
    receiver: Proc
    receiver_url: str
    receiver_log: Path

    def all(self) -> list[Proc]:
        return [*self.replicas, *self.workers, self.receiver]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/_stats?after=999999999", timeout=1)
        return True
    except httpx.HTTPError:
        return False


@contextmanager
def fleet(database_url: str, workdir: Path, config: SoakConfig) -> Iterator[Fleet]:
    env = service_env(database_url)
    ports = [free_port(), free_port()]
    replicas = [
        Proc(
            f"replica{i + 1}",
            [_leadscore(), "serve", "--port", str(p), "--no-migrate"],
            env,
            workdir,
        )
        for i, p in enumerate(ports)
    ]
    workers = [
        Proc(f"worker{i + 1}", [_leadscore(), "worker", "--concurrency", "8"], env, workdir)
        for i in range(2)
    ]
    receiver_port = free_port()
    receiver_log = workdir / "receiver.jsonl"
    receiver = Proc(
        "receiver",
        [
            sys.executable,
            "-m",
            "tests.receiver",
            "--port",
            str(receiver_port),
            "--delay",
            str(config.receiver_delay),
            "--log",
            str(receiver_log),
        ],
        env,
        workdir,
    )
    made = Fleet(
        replicas=replicas,
        replica_urls=[f"http://127.0.0.1:{p}" for p in ports],
        workers=workers,
        receiver=receiver,
        receiver_url=f"http://127.0.0.1:{receiver_port}/hook",
        receiver_log=receiver_log,
    )
    try:
        for proc in made.all():
            proc.start()
        for url in made.replica_urls:
            if not wait_until(lambda url=url: _ready(url), 60, 0.2):  # type: ignore[misc]
                raise RuntimeError(f"replica {url} did not become ready")
        if not wait_until(lambda: _listening(receiver_port), 20, 0.1):
            raise RuntimeError("the receiver did not start")
        yield made
    finally:
        for proc in made.all():
            proc.stop()


# -- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One POST /v1/events: events in a batch, to one replica (by index)."""

    events: tuple[dict[str, Any], ...]
    replica: int


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def make_events(config: SoakConfig, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Each lead's events in time order (email → events); times in the last 20 days."""
    rng = random.Random(config.seed)
    per_lead = max(1, config.events // config.leads)
    start = now - timedelta(days=20)
    out: dict[str, list[dict[str, Any]]] = {}
    for lead in range(config.leads):
        hovering = lead % len(PROFILES) == HOVERING
        email = f"soak{lead:05d}@{'hover.' if hovering else ''}soak.example"
        seconds = sorted(rng.sample(range(1, 19 * 86400), per_lead))
        events = []
        properties: dict[str, Any]
        for k, offset in enumerate(seconds):
            if k == 0:
                kind, properties = "form.submitted", {}
                attributes = dict(PROFILES[lead % len(PROFILES)])
            else:
                kind, properties = rng.choice(HOVER_ACTIONS if hovering else ACTIONS)
                attributes = {}
            events.append(
                {
                    "id": f"soak-{lead:05d}-{k:05d}",
                    "type": kind,
                    "occurred_at": _iso(start + timedelta(seconds=offset)),
                    "lead": {"email": email},
                    "source": "soak",
                    "properties": properties,
                    "attributes": attributes,
                }
            )
        out[email] = events
    return out


def plan_requests(config: SoakConfig, by_lead: dict[str, list[dict[str, Any]]]) -> list[Request]:
    """The send order: by time, some events moved later (late), some sent again (duplicates).

    A late event is sent after events that happened after it (of its lead and others); a
    duplicate is sent again alone, later, to the other replica than its first sending.
    """
    rng = random.Random(config.seed + 1)
    timeline = sorted(
        (e for events in by_lead.values() for e in events), key=lambda e: e["occurred_at"]
    )
    n = len(timeline)
    items: list[tuple[float, bool, dict[str, Any]]] = []
    for position, event in enumerate(timeline):
        key = float(position)
        penalty = event["type"] in ("email.unsubscribed", "email.bounced")
        hovering = penalty and event["lead"]["email"].endswith(_HOVERING_SUFFIX)
        if rng.random() < (HOVER_LATE_RATE if hovering else config.late_rate):
            key += rng.randint(1, max(1, n // 3)) + 0.5
        items.append((key, False, event))
        if rng.random() < config.duplicate_rate:
            items.append((key + rng.randint(1, max(1, n // 4)) + 0.25, True, event))
    items.sort(key=lambda item: item[0])
    requests: list[Request] = []
    replica_of: dict[str, int] = {}
    batch: list[dict[str, Any]] = []
    size = rng.randint(1, config.batch_max)

    def flush() -> None:
        nonlocal batch, size
        if batch:
            replica = len(requests) % 2
            requests.append(Request(tuple(batch), replica))
            replica_of.update((e["id"], replica) for e in batch)
            batch, size = [], rng.randint(1, config.batch_max)

    for _, duplicate, event in items:
        if duplicate:
            flush()
            requests.append(Request((event,), 1 - replica_of.get(event["id"], 1)))
            continue
        batch.append(event)
        if len(batch) >= size:
            flush()
    flush()
    return requests


@dataclass
class LoadStats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    unavailable_with_retry_after: int = 0
    unavailable_without_retry_after: int = 0
    failures: list[str] = field(default_factory=list)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _send(client: httpx.Client, urls: list[str], request: Request, stats: LoadStats) -> None:
    replica = request.replica
    body = {"events": list(request.events)}
    for _attempt in range(600):
        started = time.perf_counter()
        try:
            response = client.post(f"{urls[replica]}/v1/events", json=body)
        except httpx.TransportError:
            with stats.lock:
                stats.transport_errors += 1
            replica = 1 - replica  # killed or restarting: the other replica takes it
            time.sleep(0.05)
            continue
        elapsed = time.perf_counter() - started
        with stats.lock:
            stats.statuses[response.status_code] += 1
        if response.status_code == 200:
            results = response.json()["results"]
            with stats.lock:
                stats.latencies.append(elapsed)
                stats.results.update(r["status"] for r in results)
                if any(r["status"] == "rejected" for r in results):
                    stats.failures.append(f"rejected: {results}")
            return
        if response.status_code == 503:
            retry_after = response.headers.get("retry-after")
            problem = response.headers.get("content-type") == "application/problem+json"
            with stats.lock:
                if retry_after and problem:
                    stats.unavailable_with_retry_after += 1
                else:
                    stats.unavailable_without_retry_after += 1
            time.sleep(min(float(retry_after or 1), 0.5))
            continue
        with stats.lock:
            stats.failures.append(f"HTTP {response.status_code}: {response.text[:300]}")
        return
    with stats.lock:
        stats.failures.append(f"gave up on a request of {len(request.events)} events")


# -- faults ------------------------------------------------------------------------------------


@dataclass
class FaultLog:
    entries: list[str] = field(default_factory=list)
    #: Answers of probes sent to the replicas while PostgreSQL was down: (status, headers).
    probes: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _probe(url: str) -> tuple[int, str | None, str | None]:
    response = httpx.get(
        f"{url}/v1/leads", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    return (
        response.status_code,
        response.headers.get("retry-after"),
        response.headers.get("content-type"),
    )


def run_faults(
    config: SoakConfig,
    made: Fleet,
    cluster: Cluster,
    stats: LoadStats,
    total: int,
    faults_log: FaultLog,
) -> None:
    """Each enabled fault once, when the clients have sent a given share of the requests."""

    def at(share: float) -> None:
        wait_until(lambda: stats.done >= share * total, 3600, 0.05)

    def note(text_: str) -> None:
        faults_log.entries.append(f"{stats.done}/{total} requests: {text_}")
        config.log(f"  fault at {stats.done}/{total} requests: {text_}")

    try:
        if "receiver" in config.faults:
            at(0.2)
            made.receiver.kill()
            note(f"receiver killed, down {config.receiver_down_seconds:g} s")
            time.sleep(config.receiver_down_seconds)
            made.receiver.start()
            note("receiver back")
        if "kill" in config.faults:
            at(0.35)
            made.workers[0].kill()
            made.replicas[0].kill()
            note("worker1 and replica1 killed with SIGKILL")
            time.sleep(0.5)
            made.workers[0].start()
            made.replicas[0].start()
            wait_until(lambda: _ready(made.replica_urls[0]), 60, 0.2)
            note("worker1 and replica1 restarted")
        if "pg" in config.faults:
            at(0.55)
            cluster.stop("fast")
            note(f"PostgreSQL stopped, down {config.pg_down_seconds:g} s")
            deadline = time.monotonic() + config.pg_down_seconds
            for url in made.replica_urls:
                faults_log.probes.append(_probe(url))
            time.sleep(max(0.0, deadline - time.monotonic()))
            cluster.start()
            note("PostgreSQL started")
    except Exception as exc:  # reported as a failed check, not lost in a thread
        faults_log.errors.append(f"{type(exc).__name__}: {exc}")


# -- checks ------------------------------------------------------------------------------------


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)


def _offline(events: list[dict[str, Any]], as_of: datetime) -> tuple[Any, ...]:
    scorer = _primary().scorer
    scoring = [
        ScoringEvent(
            id=e["id"],
            type=e["type"],
            occurred_at=datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")),
            properties=e["properties"],
            attributes=e["attributes"],
        )
        for e in events
    ]
    _, result = scorer.replay(scoring, as_of)
    return (result.letter, result.score, result.tier, result.stage)


_RULESETS: dict[str, Any] = {}


def _primary() -> Any:
    if not _RULESETS:
        _RULESETS.update(load_rules_dir(BUNDLED_RULES_DIR))
    return _RULESETS[PRIMARY]


def _outbox_open(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM outbox_messages WHERE status <> 'delivered'")
            ).scalar_one()
        )


def check(
    engine: Engine,
    by_lead: dict[str, list[dict[str, Any]]],
    receiver_log: Path,
    stats: LoadStats,
    faults_log: FaultLog,
    config: SoakConfig,
    report: Report,
) -> None:
    sent_ids = {e["id"] for events in by_lead.values() for e in events}
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT id, lead_id FROM events")).all()
        leads = {
            row.email: row
            for row in conn.execute(
                text("SELECT id, email, letter, score, tier, stage, announced_stages FROM leads")
            )
        }
        n_events = {
            row.lead_id: int(row.state["n_events"])
            for row in conn.execute(
                text("SELECT lead_id, state FROM lead_scores WHERE ruleset_name = :name"),
                {"name": PRIMARY},
            )
        }
        history = conn.execute(
            text("SELECT event_ids FROM score_changes WHERE ruleset_name = :name"),
            {"name": PRIMARY},
        ).all()
        outbox = conn.execute(
            text("SELECT id, lead_id, event_type, status FROM outbox_messages")
        ).all()
    # Events: each stored once, every one stored, each applied once.
    stored_ids = [row.id for row in stored]
    report.counts["events sent (unique ids)"] = len(sent_ids)
    report.counts["events stored"] = len(stored_ids)
    if len(stored_ids) != len(set(stored_ids)) or set(stored_ids) != sent_ids:
        report.fail(
            f"events stored {len(stored_ids)} ({len(set(stored_ids))} unique) "
            f"for {len(sent_ids)} sent"
        )
    per_lead = Counter(row.lead_id for row in stored)
    wrong_counts = [lead for lead, count in per_lead.items() if n_events.get(lead) != count]
    report.counts["leads whose state holds each event once"] = len(per_lead) - len(wrong_counts)
    if wrong_counts:
        report.fail(f"{len(wrong_counts)} leads applied a different number of events than stored")
    folded = Counter(event_id for row in history for event_id in (row.event_ids or []))
    twice = [event_id for event_id, count in folded.items() if count > 1]
    report.counts["history rows"] = len(history)
    if twice:
        report.fail(f"{len(twice)} events appear in two history rows, e.g. {twice[:3]}")
    # Final scores equal an offline replay.
    as_of = datetime.now(UTC)
    mismatches = []
    for email, events in by_lead.items():
        lead = leads.get(email)
        got = None if lead is None else (lead.letter, lead.score, lead.tier, lead.stage)
        expected = _offline(events, as_of)
        if got != expected:
            mismatches.append(f"{email}: stored {got}, replayed {expected}")
    report.counts["leads equal to the offline replay"] = len(by_lead) - len(mismatches)
    if len(leads) != len(by_lead):
        report.fail(f"{len(leads)} leads stored for {len(by_lead)} people")
    if mismatches:
        report.fail(f"{len(mismatches)} leads differ from the offline replay: {mismatches[:3]}")
    # Deliveries: all delivered, all received, never two at once.
    received: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if receiver_log.exists():
        for line in receiver_log.read_text().splitlines():
            entry = json.loads(line)
            received[entry["webhook_id"]].append(entry)
    report.counts["outbox messages"] = len(outbox)
    not_delivered = [row.id for row in outbox if row.status != "delivered"]
    missing = [
        row.id
        for row in outbox
        if not any(200 <= e["status"] < 300 for e in received.get(row.id, []))
    ]
    overlaps = sum(1 for entries in received.values() for e in entries if e["overlap"])
    overlaps += _interval_overlaps(received)
    report.counts["messages delivered"] = len(outbox) - len(not_delivered)
    report.counts["messages in the receiver's log (2xx)"] = len(outbox) - len(missing)
    report.counts["receiver requests"] = sum(len(v) for v in received.values())
    report.counts["deliveries of one message at once"] = overlaps
    if not_delivered:
        report.fail(f"{len(not_delivered)} outbox messages not delivered")
    if missing:
        report.fail(f"{len(missing)} delivered messages never reached the receiver")
    if overlaps:
        report.fail(f"{overlaps} deliveries overlapped another of the same message")
    # One crossing, one message.
    stage_messages = Counter(
        (row.lead_id, row.event_type)
        for row in outbox
        if row.event_type in ("lead.mql", "lead.sql")
    )
    repeated = {key: n for key, n in stage_messages.items() if n > 1}
    report.counts["lead.mql messages"] = sum(
        n for (_, kind), n in stage_messages.items() if kind == "lead.mql"
    )
    report.counts["leads told lead.mql twice"] = len(
        [1 for (_, kind) in repeated if kind == "lead.mql"]
    )
    if repeated:
        report.fail(f"{len(repeated)} (lead, stage) pairs announced twice: {list(repeated)[:3]}")
    told: dict[str, set[str]] = defaultdict(set)
    for lead_id, kind in stage_messages:
        told[lead_id].add(kind.removeprefix("lead."))
    differ = [
        row.email for row in leads.values() if told.get(row.id, set()) != set(row.announced_stages)
    ]
    if differ:
        report.fail(f"{len(differ)} leads' announced stages differ from messages: {differ[:3]}")
    unannounced = [
        row.email
        for row in leads.values()
        if row.stage in ("mql", "sql") and (row.id, f"lead.{row.stage}") not in stage_messages
    ]
    if unannounced:
        report.fail(f"{len(unannounced)} leads at mql/sql never announced: {unannounced[:3]}")
    # Clients: never a 500; 503 always with Retry-After; the database outage was a 503.
    report.counts["HTTP 200"] = stats.statuses[200]
    report.counts["HTTP 503 with Retry-After"] = stats.unavailable_with_retry_after
    report.counts["HTTP 503 without Retry-After"] = stats.unavailable_without_retry_after
    report.counts["connection errors (replica killed)"] = stats.transport_errors
    for status, count in stats.statuses.items():
        if status >= 500 and status != 503:
            report.fail(f"{count} answers HTTP {status}")
    if stats.unavailable_without_retry_after:
        report.fail(f"{stats.unavailable_without_retry_after} 503s without Retry-After")
    report.failures.extend(stats.failures[:5])
    if "pg" in config.faults:
        good = [
            p
            for p in faults_log.probes
            if p[0] == 503 and p[1] and p[2] == "application/problem+json"
        ]
        report.counts["probes during the outage answered 503 + Retry-After"] = len(good)
        if not faults_log.probes or len(good) != len(faults_log.probes):
            report.fail(f"while PostgreSQL was down the replicas answered {faults_log.probes}")
    report.failures.extend(faults_log.errors)


def _interval_overlaps(received: dict[str, list[dict[str, Any]]]) -> int:
    """Deliveries of one message whose [arrival, answer] times intersect (across restarts)."""
    count = 0
    for entries in received.values():
        spans = sorted((e["received_at"], e["logged_at"]) for e in entries)
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                count += 1
    return count


# -- the run -----------------------------------------------------------------------------------


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def soak(config: SoakConfig) -> Report:
    """Run the whole soak: cluster, fleet, load with faults, drain, checks, figures."""
    report = Report()
    log = config.log
    with tempfile.TemporaryDirectory(prefix="leadscore-soak-") as tmp, Cluster() as cluster:
        workdir = Path(tmp)
        upgrade_database(cluster.url)
        engine = make_engine(cluster.url, poolclass=NullPool)
        now = datetime.now(UTC).replace(microsecond=0)
        by_lead = make_events(config, now)
        requests = plan_requests(config, by_lead)
        sent_events = sum(len(r.events) for r in requests)
        log(
            f"soak: {sent_events} events ({sum(len(v) for v in by_lead.values())} unique) for "
            f"{len(by_lead)} leads in {len(requests)} requests, {config.clients} clients, "
            f"faults: {','.join(sorted(config.faults)) or 'none'}"
        )
        with fleet(cluster.url, workdir, config) as made:
            created = httpx.post(
                f"{made.replica_urls[0]}/v1/subscriptions",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                json={"url": made.receiver_url, "event_types": ["*"]},
                timeout=30,
            )
            created.raise_for_status()
            stats = LoadStats()
            faults_log = FaultLog()
            fault_thread = threading.Thread(
                target=run_faults,
                args=(config, made, cluster, stats, len(requests), faults_log),
                daemon=True,
            )
            started = time.perf_counter()
            fault_thread.start()
            load = threading.Thread(
                target=run_load, args=(config, made.replica_urls, requests, stats), daemon=True
            )
            load.start()
            load.join()
            ingest_seconds = time.perf_counter() - started
            fault_thread.join(timeout=120)
            log(f"  load done in {ingest_seconds:.1f} s; waiting for the outbox to drain")
            drained = wait_until(lambda: _outbox_open(engine) == 0, config.drain_timeout, 0.5)
            drain_seconds = time.perf_counter() - started - ingest_seconds
            time.sleep(0.5)  # the last answers reach the receiver's log
            report.figures["processes"] = {
                proc.name: {
                    "rss_mib": round(proc.rss_mib(), 1),
                    "cpu_seconds": round(proc.cpu_before + proc.cpu_seconds(), 1),
                    "starts": proc.starts,
                }
                for proc in made.all()
                if proc.popen is not None and proc.popen.poll() is None
            }
        if not drained:
            report.fail(f"the outbox did not drain within {config.drain_timeout:g} s")
        check(engine, by_lead, made.receiver_log, stats, faults_log, config, report)
        engine.dispose()
        report.figures.update(
            {
                "events_sent": sent_events,
                "requests": len(requests),
                "ingest_seconds": round(ingest_seconds, 1),
                "events_per_second": round(sent_events / ingest_seconds, 1),
                "latency_ms": {
                    "p50": round(_percentile(stats.latencies, 0.50) * 1000, 1),
                    "p95": round(_percentile(stats.latencies, 0.95) * 1000, 1),
                    "p99": round(_percentile(stats.latencies, 0.99) * 1000, 1),
                    "mean": round(statistics.fmean(stats.latencies) * 1000, 1)
                    if stats.latencies
                    else 0.0,
                },
                "drain_seconds_after_load": round(drain_seconds, 1),
                "faults": faults_log.entries,
            }
        )
    return report


def run_load(config: SoakConfig, urls: list[str], requests: list[Request], into: LoadStats) -> None:
    """Send ``requests`` from ``config.clients`` threads, counting into ``into`` as they go
    (the fault thread follows ``into.done``)."""
    work: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
    for request in requests:
        work.put(request)
    for _ in range(config.clients):
        work.put(None)

    def client_loop() -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(headers=headers, timeout=60) as client:
            while (request := work.get()) is not None:
                _send(client, urls, request, into)
                with into.lock:
                    into.done += 1

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(config.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def print_report(report: Report, log: Callable[[str], None]) -> None:
    figures = report.figures
    log(
        f"throughput: {figures['events_per_second']} events/s "
        f"({figures['events_sent']} events in {figures['ingest_seconds']} s, "
        f"{figures['requests']} requests)"
    )
    latency = figures["latency_ms"]
    log(
        f"latency per request: p50 {latency['p50']} ms, p95 {latency['p95']} ms, "
        f"p99 {latency['p99']} ms (mean {latency['mean']} ms)"
    )
    log(f"outbox drained {figures['drain_seconds_after_load']} s after the load")
    for name, proc in figures.get("processes", {}).items():
        log(
            f"  {name}: RSS {proc['rss_mib']} MiB, CPU {proc['cpu_seconds']} s"
            f" (started {proc['starts']}×)"
        )
    for entry in figures.get("faults", []):
        log(f"  fault: {entry}")
    for name, value in report.counts.items():
        log(f"  {name}: {value}")
    if report.failures:
        log("FAILED:")
        for failure in report.failures:
            log(f"  - {failure}")
    else:
        log("all checks passed")
