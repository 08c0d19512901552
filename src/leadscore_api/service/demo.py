"""``leadscore demo``: a realistic quarter of an Italian SME's leads, through the real pipeline.

A sales manager who installs leadscore should see every chart, KPI and backtest say something
true before connecting a single form. So the demo does not write scores: it writes what the
world would have sent (form fills, newsletter sign-ups, webinar attendance, badge scans at a
trade fair, LinkedIn lead forms, referrals, then the CRM's outcomes), and ingestion scores,
routes and records them exactly as it would live events.

The generator is a pure function of a seed and an end date (:func:`generate_leads`,
:func:`behaviour_events`, :func:`outcome_events`, :func:`acquisition_costs`), so the same seed
gives the same quarter. The proportions follow the seeds: fit letters from a B2B mix of
personas; engagement that depends on the persona and the channel; MQL → SQL near 30 %; about
10–17 % of leads reaching an opportunity, far more often from high scores than from low ones
(so a backtest of the SQL threshold shows the guide's case study); hand-over response times
mostly under the procedure's 4 hours, but not all; a cost per lead per channel around the 50 €
target, with the trade fair well above it.
"""

from __future__ import annotations

import math
import random
import time as clock
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import Conflict
from leadscore_api.ingest.events import CanonicalEvent, LeadRef
from leadscore_api.service import costs
from leadscore_api.service import leads as leads_service
from leadscore_api.service.freshness import refresh_due
from leadscore_api.service.ingestion import EventResult, run_ingest
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.repositories import costs as costs_repo
from leadscore_api.storage.repositories.leads import LeadFilters
from leadscore_api.storage.unit_of_work import in_transaction

ROME = ZoneInfo("Europe/Rome")
QUARTER_DAYS = 91
#: Events per ingestion transaction.
BATCH = 500


@dataclass(frozen=True)
class Channel:
    """An acquisition channel: how leads arrive and what each one costs."""

    name: str
    #: The canonical ``source`` attribute (design §9), which the BANT model scores.
    source: str
    share: float
    #: How much likelier than average its leads are to be a good fit and engaged.
    fit_boost: float
    intent_boost: float
    cost_per_lead_eur: float
    #: Fixed cost per month (subscriptions, the fair's stand), spread over the quarter.
    fixed_monthly_eur: float


CHANNELS: tuple[Channel, ...] = (
    Channel("web_form", "organic", 0.30, 1.0, 1.0, 28.0, 600.0),
    Channel("newsletter", "email", 0.17, 0.8, 0.8, 9.0, 150.0),
    Channel("webinar", "webinar", 0.14, 1.1, 1.3, 35.0, 400.0),
    Channel("fiera", "event", 0.12, 1.4, 1.1, 95.0, 0.0),
    Channel("linkedin", "social", 0.17, 1.1, 0.9, 62.0, 0.0),
    Channel("referral", "referral", 0.10, 1.3, 1.6, 18.0, 0.0),
)
CHANNELS_BY_NAME = {c.name: c for c in CHANNELS}

DECISION_ROLES = (
    "CEO",
    "Titolare",
    "Responsabile acquisti",
    "Marketing manager",
    "Direttore generale",
    "Purchasing manager",
    "Amministratore delegato",
)
OTHER_MANAGERS = ("HR manager", "Responsabile IT", "Direttore commerciale", "CFO", "Sales manager")
JUNIOR_ROLES = ("Impiegato amministrativo", "Stagista", "Consulente", "Assistente", "Tecnico")
TARGET_INDUSTRIES = ("manifatturiero", "IT", "informatica", "manufacturing")
OTHER_INDUSTRIES = ("servizi", "commercio", "edilizia", "logistica", "turismo", "alimentare")
REGIONS = (
    ("Lombardia", 25),
    ("Veneto", 12),
    ("Emilia-Romagna", 10),
    ("Piemonte", 8),
    ("Lazio", 10),
    ("Toscana", 7),
    ("Campania", 7),
    ("Puglia", 5),
    ("Sicilia", 5),
    ("Marche", 4),
    ("Friuli-Venezia Giulia", 3),
    ("Liguria", 4),
)
FIRST_NAMES = (
    "Anna", "Marco", "Giulia", "Luca", "Francesca", "Alessandro", "Chiara", "Matteo", "Sara",
    "Lorenzo", "Elena", "Andrea", "Valentina", "Davide", "Martina", "Simone", "Laura", "Paolo",
)  # fmt: skip
LAST_NAMES = (
    "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
    "Greco", "Bruno", "Gallo", "Conti", "De Luca", "Mancini", "Costa", "Giordano", "Rizzo",
)  # fmt: skip
COMPANY_WORDS = (
    "Meccanica", "Sistemi", "Tecno", "Plast", "Metal", "Soft", "Logistica", "Impianti", "Data",
    "Elettronica", "Componenti", "Servizi", "Digitale", "Industrie", "Automazione", "Lab",
)  # fmt: skip

#: Letter mix of the quarter's leads (fit from explicit data, B2B).
LETTER_SHARES = {"A": 0.10, "B": 0.25, "C": 0.33, "D": 0.32}
#: Fit profiles per letter: (role kind, target industry, > 50 employees, > 1 M€ revenue).
#: Points (pmi-letter-score): decision role 15, other manager 5, industry 10, size 10, revenue 15.
PROFILES: dict[str, tuple[tuple[str, bool, bool, bool], ...]] = {
    "A": (("decision", True, True, True),),
    "B": (
        ("decision", False, True, True),
        ("decision", True, True, False),
        ("manager", True, True, True),
        ("decision", True, False, True),
        ("junior", True, True, True),
    ),
    "C": (
        ("decision", True, False, False),
        ("junior", False, True, True),
        ("manager", True, False, False),
        ("decision", False, False, False),
    ),
    "D": (
        ("junior", False, False, False),
        ("manager", False, False, False),
        ("junior", True, False, False),
        ("junior", False, True, False),
    ),
}
#: Engagement (low, medium, high) by letter: good fits read more, as buyers do.
INTENT_BY_LETTER = {
    "A": (0.18, 0.27, 0.55),
    "B": (0.72, 0.10, 0.18),
    "C": (0.70, 0.22, 0.08),
    "D": (0.78, 0.17, 0.05),
}
#: Behavioural events per lead by engagement.
EVENTS_BY_INTENT = {"low": (0, 2), "medium": (3, 6), "high": (9, 15)}
BEHAVIOURS = (
    ("pricing", 0.28),
    ("email.opened", 0.24),
    ("content.downloaded", 0.14),
    ("webinar.attended", 0.08),
    ("page.viewed", 0.08),
    ("email.clicked", 0.06),
    ("demo.requested", 0.05),
)


@dataclass
class DemoLead:
    key: int
    email: str
    channel: Channel
    letter: str
    intent: str
    arrived_at: datetime
    attributes: dict[str, Any]


@dataclass
class DemoReport:
    leads: int = 0
    events: int = 0
    rejected: int = 0
    mql: int = 0
    sql: int = 0
    contacted: int = 0
    contacted_late: int = 0
    opportunities: int = 0
    won: int = 0
    lost: int = 0
    letters: dict[str, int] = field(default_factory=dict)
    costs: list[tuple[str, str, float]] = field(default_factory=list)
    costs_stored: bool = False
    seconds: float = 0.0


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def _office_time(rng: random.Random, day: date) -> datetime:
    """A moment of a working day in Rome, when people fill forms and read email."""
    while day.weekday() >= 5 and rng.random() < 0.85:
        day += timedelta(days=1)
    minutes = int(rng.triangular(8 * 60, 19 * 60, 11 * 60))
    local = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=ROME)
    return local.astimezone(UTC)


def _fair_days(start: date) -> tuple[date, date]:
    """The quarter's trade fair: three days a month after the quarter starts."""
    first = start + timedelta(days=35)
    while first.weekday() != 1:  # a Tuesday
        first += timedelta(days=1)
    return first, first + timedelta(days=2)


def _attributes(rng: random.Random, letter: str, channel: Channel) -> dict[str, Any]:
    role_kind, target, big, rich = rng.choice(PROFILES[letter])
    role = rng.choice(
        {"decision": DECISION_ROLES, "manager": OTHER_MANAGERS, "junior": JUNIOR_ROLES}[role_kind]
    )
    employees = (
        int(math.exp(rng.uniform(math.log(51), math.log(1500)))) if big else rng.randint(3, 50)
    )
    revenue = (
        int(math.exp(rng.uniform(math.log(1_200_000), math.log(60_000_000))) // 10_000 * 10_000)
        if rich
        else rng.randrange(100_000, 1_000_001, 10_000)
    )
    attributes: dict[str, Any] = {
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": rng.choice(LAST_NAMES),
        "company": f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_WORDS)} S.r.l.",
        "role": role,
        "industry": rng.choice(TARGET_INDUSTRIES if target else OTHER_INDUSTRIES),
        "employees": employees,
        "annual_revenue_eur": revenue,
        "country": "IT",
        "region": _pick(rng, REGIONS),
        "source": channel.source,
    }
    if letter in ("A", "B"):
        attributes["authority"] = "decision_maker" if role_kind == "decision" else "influencer"
        attributes["budget_eur"] = rng.randrange(5_000, 80_000, 1_000)
        if rng.random() < 0.6:
            attributes["need"] = "gestione lead e CRM"
        attributes["timeline_days"] = rng.choice((30, 60, 90, 180))
    return attributes


def generate_leads(seed: int, count: int, end: date) -> list[DemoLead]:
    """The quarter's leads (who, from where, how well they fit, how engaged), deterministic."""
    rng = random.Random(seed)
    start = end - timedelta(days=QUARTER_DAYS)
    fair_first, fair_last = _fair_days(start)
    leads: list[DemoLead] = []
    for key in range(count):
        channel: Channel = _pick(rng, [(c, c.share) for c in CHANNELS])
        weights = dict(LETTER_SHARES)
        weights["A"] *= channel.fit_boost
        weights["B"] *= channel.fit_boost
        letter: str = _pick(rng, list(weights.items()))
        low, medium, high = INTENT_BY_LETTER[letter]
        intent: str = _pick(
            rng,
            [
                ("low", low),
                ("medium", medium * channel.intent_boost),
                ("high", high * channel.intent_boost),
            ],
        )
        if channel.name == "fiera" and rng.random() < 0.8:
            day = fair_first + timedelta(days=rng.randint(0, (fair_last - fair_first).days))
        else:
            day = start + timedelta(days=rng.randint(0, QUARTER_DAYS - 1))
        attributes = _attributes(rng, letter, channel)
        slug = f"{attributes['first_name']}.{attributes['last_name']}".lower().replace(" ", "")
        domain = attributes["company"].split()[0].lower() + attributes["company"].split()[1].lower()
        email = f"{slug}.{key}@{domain}.example.it"
        leads.append(
            DemoLead(key, email, channel, letter, intent, _office_time(rng, day), attributes)
        )
    return leads


def _ids(seed: int, lead: DemoLead, kind: str) -> Iterator[str]:
    """Event ids of one lead: the same seed gives the same ids, whatever other leads did."""
    return (f"demo-{seed}-{lead.key}-{kind}{n}" for n in range(1, 10**6))


def _rng(seed: int, lead: DemoLead, kind: str) -> random.Random:
    # A string seed is hashed with SHA-512: stable across runs and Python processes.
    return random.Random(f"{seed}:{lead.key}:{kind}")


def _event(
    ids: Iterator[str],
    event_type: str,
    lead: DemoLead,
    at: datetime,
    *,
    source: str | None = None,
    properties: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> CanonicalEvent:
    return CanonicalEvent(
        id=next(ids),
        type=event_type,
        occurred_at=at,
        lead=LeadRef(email=lead.email),
        source=source or lead.channel.name,
        properties=properties or {},
        attributes=attributes or {},
    )


def _first_touch(ids: Iterator[str], lead: DemoLead) -> list[CanonicalEvent]:
    at = lead.arrived_at
    name = lead.channel.name
    if name == "newsletter":
        return [_event(ids, "newsletter.subscribed", lead, at, attributes=lead.attributes)]
    if name == "webinar":
        return [
            _event(
                ids,
                "webinar.registered",
                lead,
                at,
                properties={"webinar": "Lead scoring per PMI"},
                attributes=lead.attributes,
            )
        ]
    properties = {
        "web_form": {"form": "contatti", "url": "https://example.it/contatti"},
        "fiera": {"form": "scansione badge", "event": "Fiera SPS Italia"},
        "linkedin": {"form": "LinkedIn lead gen"},
        "referral": {"form": "segnalazione cliente"},
    }[name]
    return [
        _event(
            ids,
            "form.submitted",
            lead,
            at,
            properties=properties,
            attributes=lead.attributes,
        )
    ]


def behaviour_events(seed: int, leads: Sequence[DemoLead], until: datetime) -> list[CanonicalEvent]:
    """First touches and what each lead did after, in time order, none after ``until``."""
    events: list[CanonicalEvent] = []
    for lead in leads:
        rng = _rng(seed, lead, "behaviour")
        ids = _ids(seed, lead, "b")
        events.extend(_first_touch(ids, lead))
        low, high = EVENTS_BY_INTENT[lead.intent]
        span = {"low": 60, "medium": 40, "high": 25}[lead.intent]
        for _ in range(rng.randint(low, high)):
            day = (lead.arrived_at + timedelta(days=rng.uniform(0, span))).date()
            at = _office_time(rng, day)
            kind = _pick(rng, BEHAVIOURS)
            if kind == "demo.requested" and lead.intent != "high":
                kind = "email.opened"
            properties: dict[str, Any] = {}
            if kind == "pricing":
                kind, properties = "page.viewed", {"url": "https://example.it/prezzi"}
            elif kind == "page.viewed":
                properties = {
                    "url": rng.choice(("https://example.it/prodotti", "https://example.it/blog"))
                }
            elif kind == "content.downloaded":
                properties = {
                    "title": rng.choice(("White paper: lead scoring", "Case study MetalPro"))
                }
            events.append(_event(ids, kind, lead, at, properties=properties))
        if lead.channel.name == "webinar" and rng.random() < 0.7:
            events.append(
                _event(ids, "webinar.attended", lead, lead.arrived_at + timedelta(days=7))
            )
        if lead.intent == "low" and rng.random() < 0.12:
            kind = rng.choice(("email.unsubscribed", "email.bounced"))
            at = _office_time(rng, (lead.arrived_at + timedelta(days=rng.uniform(5, 50))).date())
            events.append(_event(ids, kind, lead, at))
    events = [e for e in events if e.occurred_at <= until]
    events.sort(key=lambda e: (e.occurred_at, e.id))
    return events


def _working_delay(rng: random.Random, start: datetime, hours: float) -> datetime:
    """``hours`` later, skipping nights and weekends as a sales desk does (roughly)."""
    at = start.astimezone(ROME)
    remaining = hours
    while remaining > 0:
        if at.weekday() >= 5 or at.hour >= 18:
            at = (at + timedelta(days=1)).replace(hour=9, minute=rng.randint(0, 40))
            continue
        if at.hour < 9:
            at = at.replace(hour=9, minute=rng.randint(0, 40))
        step = min(remaining, 18 - at.hour - at.minute / 60)
        at += timedelta(hours=step)
        remaining -= step
    return at.astimezone(UTC)


def outcome_events(
    seed: int,
    leads: Sequence[DemoLead],
    handed_over: dict[str, tuple[datetime, bool]],
    until: datetime,
) -> list[CanonicalEvent]:
    """What sales did with each hand-over (MQL), and the deals that came of it.

    ``handed_over`` maps a lead's email to when it became MQL and whether it reached SQL.
    Opportunities come far more often from SQLs than from other MQLs, and hardly ever from
    leads never handed over, so conversion rises with the score.
    """
    events: list[CanonicalEvent] = []
    for lead in leads:
        rng = _rng(seed, lead, "outcomes")
        ids = _ids(seed, lead, "o")
        handover = handed_over.get(lead.email)
        if handover is None:
            if rng.random() < (0.04 if lead.intent == "high" else 0.01):
                at = lead.arrived_at + timedelta(days=rng.uniform(10, 40))
                events.append(_event(ids, "lead.contacted", lead, at, source="crm"))
                events.append(
                    _event(
                        ids,
                        "opportunity.created",
                        lead,
                        at + timedelta(days=3),
                        source="crm",
                    )
                )
            continue
        mql_at, reached_sql = handover
        accepted = _working_delay(rng, mql_at, rng.lognormvariate(math.log(1.5), 0.8))
        events.append(_event(ids, "lead.accepted", lead, accepted, source="crm"))
        if rng.random() < 0.08:
            continue  # handed over, never called: an abandoned lead
        response_hours = rng.lognormvariate(math.log(1.4), 0.9)
        contacted = _working_delay(rng, mql_at, response_hours)
        events.append(
            _event(
                ids,
                "lead.contacted",
                lead,
                contacted,
                source="crm",
                properties={"channel": rng.choice(("phone", "phone", "email"))},
            )
        )
        p_opportunity = 0.8 if reached_sql else (0.4 if lead.letter == "A" else 0.28)
        if rng.random() >= p_opportunity:
            if rng.random() < 0.5:
                lost = contacted + timedelta(days=rng.uniform(5, 30))
                events.append(
                    _event(
                        ids,
                        "deal.lost",
                        lead,
                        lost,
                        source="crm",
                        properties={"reason": "no budget"},
                    )
                )
            continue
        opened = contacted + timedelta(days=rng.uniform(2, 14))
        amount = round(rng.lognormvariate(math.log(18_000), 0.6), -2)
        events.append(
            _event(
                ids,
                "opportunity.created",
                lead,
                opened,
                source="crm",
                properties={"amount": amount},
            )
        )
        cycle_days = rng.uniform(12, 26) if reached_sql else rng.uniform(20, 45)
        closed = opened + timedelta(days=cycle_days)
        draw = rng.random()
        if draw < (0.45 if reached_sql else 0.3):
            events.append(
                _event(
                    ids,
                    "deal.won",
                    lead,
                    closed,
                    source="crm",
                    properties={"amount": amount},
                )
            )
        elif draw < 0.85:
            events.append(
                _event(
                    ids,
                    "deal.lost",
                    lead,
                    closed,
                    source="crm",
                    properties={"reason": rng.choice(("price", "competitor", "timing"))},
                )
            )
    events = [e for e in events if e.occurred_at <= until]
    events.sort(key=lambda e: (e.occurred_at, e.id))
    return events


def acquisition_costs(seed: int, leads: Sequence[DemoLead]) -> list[tuple[str, str, float]]:
    """(source, month ``YYYY-MM``, amount in €) per channel and month of the quarter.

    ``source`` is the canonical ``source`` attribute of the channel's leads (organic, email,
    webinar, event, social, referral). The trade fair's stand is paid in the fair's month.
    """
    rng = random.Random(seed * 31337 + 3)
    per_month: Counter[tuple[str, str]] = Counter()
    for lead in leads:
        month = lead.arrived_at.astimezone(ROME).strftime("%Y-%m")
        per_month[(lead.channel.name, month)] += 1
    months = sorted({month for _, month in per_month})
    fair_month = max(months, key=lambda m: per_month.get(("fiera", m), 0), default=None)
    rows: list[tuple[str, str, float]] = []
    for channel in CHANNELS:
        for month in months:
            count = per_month.get((channel.name, month), 0)
            amount = count * channel.cost_per_lead_eur * rng.uniform(0.85, 1.15)
            amount += channel.fixed_monthly_eur
            if channel.name == "fiera" and month == fair_month:
                amount += 9_500.0  # the stand
            if amount > 0:
                rows.append((channel.source, month, round(amount, 2)))
    return rows


def store_costs(
    session_factory: sessionmaker[Session], rows: Sequence[tuple[str, str, float]]
) -> bool:
    """Store the acquisition costs per source and month (as ``PUT /v1/costs`` would)."""
    entries = [
        (costs.check_source(source), costs.check_month(month), costs.check_amount(amount))
        for source, month, amount in rows
    ]
    in_transaction(
        session_factory, lambda session: costs_repo.put_costs(session, entries, utcnow())
    )
    return True


def has_leads(read_factory: sessionmaker[Session]) -> bool:
    with read_factory() as session:
        leads, _ = leads_service.list_leads(session, LeadFilters(), None, 1)
    return bool(leads)


def _ingest(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    events: Sequence[CanonicalEvent],
) -> Iterator[tuple[CanonicalEvent, EventResult]]:
    for start in range(0, len(events), BATCH):
        batch = list(events[start : start + BATCH])
        yield from zip(batch, run_ingest(session_factory, registry, batch), strict=True)


def run_demo(
    session_factory: sessionmaker[Session],
    read_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    *,
    leads: int = 3000,
    seed: int = 42,
    end: date | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> DemoReport:
    """Fill the database with a quarter ending on ``end`` (default today), through ingestion."""
    started = clock.perf_counter()
    if not force and has_leads(read_factory):
        raise Conflict(
            "the database already has leads; the demo only fills an empty one (use --force to"
            " add the demo's leads anyway)"
        )
    now = now or utcnow()
    end = end or now.astimezone(ROME).date()
    until = min(now, datetime(end.year, end.month, end.day, 23, 59, tzinfo=ROME).astimezone(UTC))
    people = generate_leads(seed, leads, end)
    report = DemoReport(leads=len(people))
    report.letters = dict(sorted(Counter(p.letter for p in people).items()))

    mql_at: dict[str, datetime] = {}
    sql_reached: set[str] = set()
    for event, result in _ingest(session_factory, registry, behaviour_events(seed, people, until)):
        report.events += 1
        if result.status == "rejected":
            report.rejected += 1
        email = event.lead.email or ""
        if "lead.mql" in result.transitions and email not in mql_at:
            mql_at[email] = event.occurred_at
        if "lead.sql" in result.transitions:
            sql_reached.add(email)
            mql_at.setdefault(email, event.occurred_at)
    report.mql = len(mql_at)
    report.sql = len(sql_reached)

    handed_over = {email: (at, email in sql_reached) for email, at in mql_at.items()}
    outcomes = outcome_events(seed, people, handed_over, until)
    first_contact: dict[str, datetime] = {}
    for event, result in _ingest(session_factory, registry, outcomes):
        report.events += 1
        if result.status == "rejected":
            report.rejected += 1
        email = event.lead.email or ""
        if event.type == "lead.contacted" and email not in first_contact:
            first_contact[email] = event.occurred_at
            report.contacted += 1
            handover = mql_at.get(email)
            if handover is not None and event.occurred_at - handover > timedelta(hours=4):
                report.contacted_late += 1
        elif event.type == "opportunity.created":
            report.opportunities += 1
        elif event.type == "deal.won":
            report.won += 1
        elif event.type == "deal.lost":
            report.lost += 1

    # Scores as of now: points older than the ruleset's window have expired meanwhile.
    refresh_due(session_factory, registry, utcnow())
    report.costs = acquisition_costs(seed, people)
    report.costs_stored = store_costs(session_factory, report.costs)
    report.seconds = clock.perf_counter() - started
    return report
