"""The scoring work a batch of 100 events costs the service, with no I/O at all.

    python bench/scoring_floor.py [--batches 200] [--leads 5000]

``POST /v1/events`` with a batch must, for every lead the batch touches and under every active
ruleset: load the lead's stored state, fold the new events in, evaluate the lead as of now
(letter, score, tier, stage, action, deadlines), take the explanation's inputs for a history row
when something visible changed (the explanation itself on code before the history stored
inputs), and store the state again. This script does exactly that in memory, with the bundled rulesets and
the event mix of ``bench/engine.py``, for batches whose 100 events fall on random leads out of
``--leads`` (so nearly every event is a different lead, as in ``bench/ingest.py``).

The rate it prints is a ceiling for the whole service on one core: HTTP, JSON, validation and
SQL all come on top. Compared in the same run with the core's own incremental rate (events
folded into states kept in memory, no evaluation), which is what ``bench/engine.py`` reports.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine import make_events
from leadscore_api.scoring import LeadState, ScoringEvent, load_rules_dir

TARGETS = {"SQLite": 20_000, "PostgreSQL": 10_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "rules"))
    args = parser.parse_args()
    rulesets = sorted(load_rules_dir(args.rules).values(), key=lambda loaded: loaded.name)

    # Each lead's history: the first events build its stored state (not timed), the rest
    # arrive in time order, 100 per batch.
    per_lead = make_events(args.leads * 6 + args.batches * 100, args.leads)
    stored: dict[int, dict[str, dict[str, Any]]] = {}
    arriving: list[tuple[ScoringEvent, int]] = []
    for lead, events in enumerate(per_lead):
        history, later = events[: len(events) // 2], events[len(events) // 2 :]
        stored[lead] = {}
        for loaded in rulesets:
            state = loaded.scorer.new_state()
            for event in history:
                loaded.scorer.apply(state, event)
            stored[lead][loaded.name] = state.to_json()
        arriving.extend((event, lead) for event in later)
    arriving.sort(key=lambda pair: (pair[0].occurred_at, pair[0].id))
    arriving = arriving[: args.batches * 100]
    batches = [arriving[i : i + 100] for i in range(0, len(arriving), 100)]

    # Baseline in the same run: the same events folded into states held in memory.
    states = {
        (lead, loaded.name): LeadState.from_json(stored[lead][loaded.name])
        for lead in stored
        for loaded in rulesets
    }
    t0 = time.perf_counter()
    for batch in batches:
        for event, lead in batch:
            for loaded in rulesets:
                loaded.scorer.apply(states[(lead, loaded.name)], event)
    incremental = time.perf_counter() - t0

    summaries: dict[tuple[int, str], dict[str, Any]] = {}
    for lead in stored:
        for loaded in rulesets:
            summary = loaded.scorer.evaluate(
                LeadState.from_json(stored[lead][loaded.name]), arriving[0][0].occurred_at
            ).summary()
            summaries[(lead, loaded.name)] = {k: v for k, v in summary.items() if k != "components"}
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    leads_touched = 0
    explained = 0
    for batch in batches:
        by_lead: dict[int, list[ScoringEvent]] = defaultdict(list)
        for event, lead in batch:
            by_lead[lead].append(event)
        leads_touched += len(by_lead)
        for lead, events in by_lead.items():
            as_of = events[-1].occurred_at + timedelta(seconds=1)
            for loaded in rulesets:
                state = LeadState.from_json(stored[lead][loaded.name])
                for event in events:
                    loaded.scorer.apply(state, event)
                result = loaded.scorer.evaluate(state, as_of)
                summary = result.summary()
                visible = {k: v for k, v in summary.items() if k != "components"}
                if visible != summaries.get((lead, loaded.name)):
                    # A history row: only when something visible changed, as the service does;
                    # it stores the explanation's inputs (the explanation itself before them).
                    inputs = getattr(result, "explanation_inputs", None)
                    if inputs is None:
                        _ = result.explanation
                    explained += 1
                summaries[(lead, loaded.name)] = visible
                stored[lead][loaded.name] = state.to_json()
    per_request = time.perf_counter() - t0
    per_request_cpu = time.process_time() - cpu0

    n_events = sum(len(batch) for batch in batches)
    rate = n_events / per_request
    print(
        f"{len(batches)} batches of 100 events over {args.leads:,} leads "
        f"({leads_touched / len(batches):.1f} leads per batch, "
        f"{explained / (leads_touched * len(rulesets)):.0%} of lead × ruleset evaluations "
        f"explained), rulesets: {', '.join(loaded.name for loaded in rulesets)}"
    )
    print(f"  fold only (states in memory):            {n_events / incremental:>9,.0f} events/s")
    print(
        f"  per request (load, fold, evaluate, explain, store): {rate:>9,.0f} events/s"
        f"   = {per_request / n_events * 1e6:.0f} µs per event, "
        f"{per_request / incremental:.1f}x the fold"
    )
    print(
        f"  per request, CPU time (time.process_time): {per_request_cpu / n_events * 1e6:.0f} µs per event"
    )
    for backend, target in TARGETS.items():
        print(
            f"  {backend} batch target {target:,} events/s is {target / rate:.1f}x this ceiling"
            " (one core; SQL, JSON and HTTP not counted)"
        )


if __name__ == "__main__":
    main()
