"""Events per second of the incremental scoring core on the bundled rulesets.

A realistic mix for an SME funnel: mostly email opens/deliveries and page views, some clicks,
downloads and form fills, a few bounces, unsubscribes, webinars and demo requests. Events are
generated up front (not timed), spread over 10,000 leads and 90 days, and applied in time
order per lead, as the service does on its fast path. Prints figures; asserts nothing.

    python bench/engine.py [--events 1000000] [--leads 10000]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from leadscore_api.scoring import ScoringEvent, load_rules_dir

#: (event type, weight, properties; a None value is filled in per event)
MIX: list[tuple[str, int, dict[str, object]]] = [
    ("email.delivered", 25, {}),
    ("email.opened", 22, {"message_id": None}),
    ("page.viewed", 25, {"url": None}),
    ("email.clicked", 8, {"message_id": None}),
    ("content.downloaded", 5, {"title": "white paper"}),
    ("form.submitted", 4, {}),
    ("newsletter.subscribed", 2, {}),
    ("webinar.attended", 2, {"asked_questions": True}),
    ("email.bounced", 1, {}),
    ("email.unsubscribed", 1, {}),
    ("demo.requested", 1, {}),
    ("social.engaged", 4, {}),
]
URLS = ["/", "/pricing", "/prodotti/erp", "/blog/lead-scoring", "/chi-siamo", "/prezzi"]
ROLES = ["CEO", "Responsabile acquisti", "HR manager", "impiegato", "Marketing manager"]
INDUSTRIES = ["manifatturiero", "IT", "servizi", "retail"]


def make_events(n_events: int, n_leads: int, seed: int = 7) -> list[list[ScoringEvent]]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    types = [t for t, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    props = {t: p for t, _, p in MIX}
    per_lead: list[list[tuple[float, ScoringEvent]]] = [[] for _ in range(n_leads)]
    for i in range(n_events):
        lead = rng.randrange(n_leads)
        kind = rng.choices(types, weights)[0]
        offset = rng.uniform(0, 90 * 86400)
        properties = dict(props[kind])
        if "url" in properties:
            properties["url"] = rng.choice(URLS)
        if "message_id" in properties:
            properties["message_id"] = f"m{rng.randrange(40)}"
        attributes: dict[str, object] = {}
        if kind == "form.submitted":
            attributes = {
                "role": rng.choice(ROLES),
                "industry": rng.choice(INDUSTRIES),
                "employees": rng.choice([5, 30, 120, 1200]),
                "annual_revenue_eur": rng.choice([200_000, 800_000, 3_000_000]),
                "budget_eur": rng.choice([0, 5000, 30000]),
                "authority": rng.choice(["decision_maker", "influencer", "user"]),
            }
        when = start + timedelta(seconds=offset)
        per_lead[lead].append((offset, ScoringEvent(f"e{i}", kind, when, properties, attributes)))
    return [
        [event for _, event in sorted(events, key=lambda p: (p[0], p[1].id))] for events in per_lead
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "rules"))
    args = parser.parse_args()
    rulesets = load_rules_dir(args.rules)
    t0 = time.perf_counter()
    leads = make_events(args.events, args.leads)
    print(
        f"generated {args.events:,} events for {args.leads:,} leads in {time.perf_counter() - t0:.1f} s"
    )
    as_of = datetime(2026, 4, 1, tzinfo=UTC)
    for name, loaded in sorted(rulesets.items()):
        scorer = loaded.scorer
        # Baseline in the same run: the cost of only walking the events (no scoring).
        t0 = time.perf_counter()
        walked = 0
        for events in leads:
            for event in events:
                walked += event.occurred_at.timestamp() > 0
        baseline = time.perf_counter() - t0
        t0 = time.perf_counter()
        for events in leads:
            state = scorer.new_state()
            for event in events:
                scorer.apply(state, event)
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample = leads[: min(1000, len(leads))]
        for events in sample:
            scorer.replay(events, as_of)
        replay = time.perf_counter() - t0
        rate = args.events / elapsed
        print(
            f"{name:18s} incremental: {rate:>10,.0f} events/s ({elapsed:.2f} s; walking alone {baseline:.2f} s, "
            f"scoring is {elapsed / baseline:.1f}x the walk) | replay+evaluate of {len(sample)} leads: "
            f"{len(sample) / replay:,.0f} leads/s"
        )


if __name__ == "__main__":
    main()
