"""Events per second of the incremental scoring core on the bundled rulesets.

A realistic mix for an SME funnel: mostly email opens/deliveries and page views, some clicks,
downloads and form fills, a few bounces, unsubscribes, webinars and demo requests. Events are
generated up front (not timed), spread over 10,000 leads and 90 days, and applied in time
order per lead, as the service does on its fast path. Then: replay, ``evaluate`` per call,
the service's per-event path through a stored state, and a late event on a long-lived lead.
Wall clock and this process's CPU time are both printed. Prints figures; asserts nothing.

    python bench/engine.py [--events 1000000] [--leads 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from leadscore_api.scoring import LeadState, ScoringEvent, load_rules_dir

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


class _Clock:
    """Wall-clock and process CPU time of one measured block (other processes share the
    machine: CPU time says what this process itself spent)."""

    def __enter__(self) -> _Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "rules"))
    parser.add_argument(
        "--long-lead", type=int, default=10_000, help="events of the lead a late event meets"
    )
    args = parser.parse_args()
    rulesets = load_rules_dir(args.rules)
    t0 = time.perf_counter()
    leads = make_events(args.events, args.leads)
    print(
        f"generated {args.events:,} events for {args.leads:,} leads in {time.perf_counter() - t0:.1f} s"
    )
    as_of = datetime(2026, 4, 1, tzinfo=UTC)
    long_lead = make_events(args.long_lead, 1, seed=11)[0]
    for name, loaded in sorted(rulesets.items()):
        scorer = loaded.scorer
        # Baseline in the same run: the cost of only walking the events (no scoring).
        t0 = time.perf_counter()
        walked = 0
        for events in leads:
            for event in events:
                walked += event.occurred_at.timestamp() > 0
        baseline = time.perf_counter() - t0
        states = []
        with _Clock() as incremental:
            for events in leads:
                state = scorer.new_state()
                for event in events:
                    scorer.apply(state, event)
                states.append(state)
        elapsed = incremental.wall
        sample = leads[: min(1000, len(leads))]
        with _Clock() as replay_clock:
            for events in sample:
                scorer.replay(events, as_of)
        replay = replay_clock.wall
        rate = args.events / elapsed
        print(
            f"{name:18s} incremental: {rate:>10,.0f} events/s ({elapsed:.2f} s; walking alone {baseline:.2f} s, "
            f"scoring is {elapsed / baseline:.1f}x the walk) | replay+evaluate of {len(sample)} leads: "
            f"{len(sample) / replay:,.0f} leads/s"
        )
        print(
            f"{'':18s} incremental CPU: {args.events / incremental.cpu:>10,.0f} events/s "
            f"({incremental.cpu:.2f} s CPU) | replay CPU: "
            f"{replay_clock.cpu / sum(len(e) for e in sample) * 1e6:.1f} µs/event, "
            f"{replay_clock.cpu / len(sample) * 1e3:.2f} ms/lead"
        )
        # evaluate: at the lead's last event (the service, after each event) and a while
        # later (the freshness sweep: points have faded, a decay crossing may be looked for).
        pairs = [(s, e[-1].occurred_at) for s, e in zip(states, leads, strict=True) if e]
        pairs = pairs[: min(2000, len(pairs))]
        with _Clock() as at_event:
            for _ in range(5):
                for state, moment in pairs:
                    scorer.evaluate(state, moment).summary()
        with _Clock() as later:
            for _ in range(5):
                for state, _moment in pairs:
                    scorer.evaluate(state, as_of).summary()
        with _Clock() as explained:
            for state, moment in pairs:
                scorer.evaluate(state, moment).to_dict()
        calls = 5 * len(pairs)
        print(
            f"{'':18s} evaluate+summary: {at_event.wall / calls * 1e6:.1f} µs/call at the last event "
            f"({at_event.cpu / calls * 1e6:.1f} µs CPU), {later.wall / calls * 1e6:.1f} µs as of "
            f"{as_of:%Y-%m-%d} ({later.cpu / calls * 1e6:.1f} µs CPU); with the explanation "
            f"(to_dict) {explained.wall / len(pairs) * 1e6:.1f} µs ({explained.cpu / len(pairs) * 1e6:.1f} µs CPU)"
        )
        # The service's path per event: stored state from JSON, one event, evaluate, summary,
        # next change, state to JSON (no database, no explanation).
        stored_path = [e for e in leads[:1000] if e]
        n_stored = sum(len(e) for e in stored_path)
        with _Clock() as stored_clock:
            for events in stored_path:
                stored: dict[str, Any] | None = None
                for event in events:
                    state = LeadState.from_json(stored) if stored else scorer.new_state()
                    scorer.apply(state, event)
                    result = scorer.evaluate(state, event.occurred_at)
                    result.summary()
                    scorer.next_change(state, event.occurred_at, result.score_exact)
                    stored = state.to_json()
        print(
            f"{'':18s} stored-state path (from_json, apply, evaluate, summary, next_change, "
            f"to_json): {stored_clock.wall / n_stored * 1e6:.1f} µs/event "
            f"({stored_clock.cpu / n_stored * 1e6:.1f} µs CPU)"
        )
        # A late event on a lead with --long-lead events: replay of the whole history, and
        # (where the core has it) resume from a snapshot stored just before the late event.
        history = long_lead[:-1]
        late = long_lead[-1]
        moment = late.occurred_at
        with _Clock() as full:
            scorer.replay([*history, late], moment)
        line = (
            f"{'':18s} late event on a lead with {len(long_lead):,} events: replay "
            f"{full.wall * 1e3:.1f} ms ({full.cpu * 1e3:.1f} ms CPU)"
        )
        resume = getattr(scorer, "resume", None)
        if resume is not None:
            head = scorer.new_state()
            for event in history[: len(history) - 10]:
                scorer.apply(head, event)
            snapshot = json.loads(json.dumps(head.to_json()))
            with _Clock() as resumed:
                resume(snapshot, [*history[len(history) - 10 :], late], moment)
            line += (
                f"; resume from a snapshot 11 events back {resumed.wall * 1e3:.2f} ms "
                f"({resumed.cpu * 1e3:.2f} ms CPU)"
            )
        print(line)


if __name__ == "__main__":
    main()
