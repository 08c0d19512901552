"""Generated leads and everything the core says about them, pinned against a fixture.

The fixture ``golden.json.gz`` was written by the engine before it was made faster (run this
module to write it again: ``python -m tests.core.golden``). The test that reads it proves that
the faster engine gives the same results, explanations and stored states, byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from leadscore_api.scoring import LeadState, OutOfOrderEvent, Scorer, ScoringEvent, load_rules_dir

FIXTURE = Path(__file__).with_name("golden.json.gz")
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
N_LEADS = 300
START = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)

TYPES = [
    ("page.viewed", 20),
    ("email.opened", 16),
    ("email.clicked", 8),
    ("email.delivered", 6),
    ("content.downloaded", 5),
    ("newsletter.subscribed", 2),
    ("webinar.attended", 3),
    ("email.bounced", 2),
    ("email.unsubscribed", 1),
    ("email.spam_reported", 1),
    ("demo.requested", 2),
    ("contact.requested", 2),
    ("form.submitted", 6),
    ("lead.attributes_updated", 4),
    ("lead.accepted", 2),
    ("lead.contacted", 3),
    ("opportunity.created", 1),
    ("deal.won", 1),
]
URLS = [
    "/",
    "/pricing",
    "/prezzi",
    "/prodotti/erp",
    "/blog/lead-scoring",
    "/solution/crm",
    "/listino",
]
ATTRIBUTE_VALUES: dict[str, list[Any]] = {
    "role": [
        "CEO",
        "Responsabile acquisti",
        "HR manager",
        "impiegato",
        "Marketing Manager",
        "Vice President sales",
        "amministratore di sistema",
        "Direttore generale",
        "",
    ],
    "industry": ["IT", "manifatturiero", "Manufacturing", "retail", "servizi", " software "],
    "employees": [3, 20, 50, 51, 120, 250, 1200, "300", "1.000", None],
    "annual_revenue_eur": [100_000, 800_000, 1_000_000, 1_000_001, 5_000_000, "2000000"],
    "segment": ["b2b", "b2c", "B2C", None],
    "age": [18, 25, 33, 45, 46, "30"],
    "region": ["Lombardia", "lazio", "Sicilia", "veneto", "Emilia-Romagna", None],
    "marital_status": ["married", "single", "convivente"],
    "interests": ["crm", ["automation", "sport"], ["sport"], [], "digital marketing"],
    "country": ["IT", "italia", "DE"],
    "budget_eur": [0, 500, 5000, 9999.99, 10000, 30000, None],
    "authority": ["decision_maker", "influencer", "user", "utente", None],
    "need": ["erp", "", None],
    "timeline_days": [0, 30, 90, 90.5, 150, 200],
    "source": ["referral", "organic", "purchased_list", "event", "paid_search", "other", "social"],
    "purchase_intent": [True, False, None],
}


def _attributes(rng: random.Random) -> dict[str, Any]:
    keys = rng.sample(sorted(ATTRIBUTE_VALUES), rng.randint(1, 7))
    return {key: rng.choice(ATTRIBUTE_VALUES[key]) for key in keys}


def make_leads(seed: int = 11) -> list[list[ScoringEvent]]:
    """Histories of 1–60 events over up to 150 days, some dense (same day, same second)."""
    rng = random.Random(seed)
    kinds = [t for t, _ in TYPES]
    weights = [w for _, w in TYPES]
    leads: list[list[ScoringEvent]] = []
    for lead in range(N_LEADS):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 60])
        span = rng.choice([3600.0, 86400.0, 7 * 86400.0, 40 * 86400.0, 150 * 86400.0])
        events: list[ScoringEvent] = []
        for i in range(n):
            kind = rng.choices(kinds, weights)[0]
            offset = rng.uniform(0, span) if rng.random() > 0.05 else 0.0
            props: dict[str, Any] = {}
            if kind == "page.viewed":
                props["url"] = rng.choice(URLS)
            if kind.startswith("email."):
                props["message_id"] = f"m{rng.randrange(6)}"
            if kind == "webinar.attended":
                props["asked_questions"] = rng.random() < 0.5
                if rng.random() < 0.3:
                    props["questions"] = rng.randrange(3)
            if kind == "form.submitted" and rng.random() < 0.4:
                props["purchase_intent"] = rng.random() < 0.5
            attributes: dict[str, Any] = {}
            if kind in ("form.submitted", "lead.attributes_updated") or i == 0:
                attributes = _attributes(rng)
            when = START + timedelta(seconds=round(offset, 3))
            events.append(ScoringEvent(f"l{lead}e{i:03d}", kind, when, props, attributes))
        leads.append(events)
    return leads


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _digest(value: Any) -> str:
    return hashlib.sha256(dump(value).encode()).hexdigest()[:24]


def outcome(scorer: Scorer, events: list[ScoringEvent]) -> dict[str, Any]:
    """What the core says about one lead: the service's incremental path step by step (as the
    service folds a batch: evaluate after each event, explanations read afterwards), the
    replay, later moments (decay, crossings, deadlines) and the stored state."""
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
    state = scorer.new_state()
    steps = []
    for event in ordered:
        scorer.apply(state, event)
        steps.append(scorer.evaluate(state, event.occurred_at))
    step_out = [[dump(r.summary()), _digest(r.to_dict())] for r in steps]
    last = ordered[-1].occurred_at
    as_of = last + timedelta(hours=1)
    replayed, result = scorer.replay(events, as_of)
    later = [scorer.evaluate(replayed, last + timedelta(days=days)) for days in (3, 31, 95, 400)]
    nxt = scorer.next_change(replayed, as_of, result.score_exact)
    # Out-of-order arrival through stored JSON, as the service does.
    stored: dict[str, Any] | None = None
    seen: list[ScoringEvent] = []
    for event in events:
        seen.append(event)
        loaded = LeadState.from_json(json.loads(dump(stored))) if stored else scorer.new_state()
        try:
            scorer.apply(loaded, event)
        except OutOfOrderEvent:
            loaded, _ = scorer.replay(seen, as_of)
        stored = loaded.to_json()
    assert stored is not None
    arrived = scorer.evaluate(LeadState.from_json(stored), as_of)
    return {
        "steps": step_out,
        "result": dump(result.to_dict()),
        "summary": dump(result.summary()),
        "state": dump(incremental_state(state)),
        "later": [_digest(r.to_dict()) for r in later],
        "next_change": None if nxt is None else nxt.isoformat(),
        "arrived": _digest(arrived.to_dict()),
    }


def incremental_state(state: LeadState) -> dict[str, Any]:
    """The stored state, as JSON would keep it (counts without a window may change layout)."""
    loaded: dict[str, Any] = json.loads(dump(state.to_json()))
    return loaded


def compute() -> dict[str, Any]:
    rules = load_rules_dir(RULES_DIR)
    leads = make_leads()
    return {
        name: [outcome(rules[name].scorer, events) for events in leads] for name in sorted(rules)
    }


if __name__ == "__main__":
    data = compute()
    FIXTURE.write_bytes(gzip.compress(dump(data).encode(), mtime=0))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")
