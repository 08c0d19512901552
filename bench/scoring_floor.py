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
from leadscore_api import json_codec
from leadscore_api.scoring import LeadState, ScoringEvent, load_rules_dir

#: Issue "A fast core": batches of 100 on ~100 leads, all included (HTTP, JSON, SQL).
TARGETS = {"SQLite": 8_000, "PostgreSQL": 4_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "rules"))
    parser.add_argument(
        "--steps",
        action="store_true",
        help="Also time each step apart (a second pass: the state's JSON text parsed and"
        " written, as storage does), in CPU µs per event.",
    )
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

    # The steps pass (--steps) starts from the same stored states, as JSON text.
    stored_text = {
        lead: {name: json_codec.dumps(state) for name, state in by_name.items()}
        for lead, by_name in stored.items()
    }
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
            f"  {backend} batch target {target:,} events/s ({1e6 / target:.0f} µs per event, all"
            f" included) is {target / rate:.2f}x this ceiling"
            " (one core; SQL, request JSON and HTTP not counted)"
        )
    if args.steps:
        print_steps(rulesets, stored_text, batches)


def print_steps(rulesets: list[Any], stored: dict[int, dict[str, str]], batches: list[Any]) -> None:
    """Each step of the per-request work, timed apart in process CPU time.

    The state goes through its JSON text here, as it does in storage (parse the column, build
    the state; serialise the state, write the text). Each timer read costs about half a
    microsecond, so the sum is a little above the untimed figure.
    """
    clock = time.process_time
    spent: dict[str, float] = defaultdict(float)
    n_events = 0
    for batch in batches:
        by_lead: dict[int, list[ScoringEvent]] = defaultdict(list)
        for event, lead in batch:
            by_lead[lead].append(event)
            n_events += 1
        for lead, events in by_lead.items():
            as_of = events[-1].occurred_at + timedelta(seconds=1)
            for loaded in rulesets:
                t0 = clock()
                data = json_codec.loads(stored[lead][loaded.name])
                t1 = clock()
                state = LeadState.from_json(data)
                t2 = clock()
                for event in events:
                    loaded.scorer.apply(state, event)
                t3 = clock()
                result = loaded.scorer.evaluate(state, as_of)
                t4 = clock()
                result.summary()
                t5 = clock()
                _ = result.explanation_inputs
                t6 = clock()
                stored[lead][loaded.name] = json_codec.dumps(state.to_json())
                t7 = clock()
                for step, start, end in (
                    ("parse the state's JSON text", t0, t1),
                    ("build the state (from_json)", t1, t2),
                    ("fold the events (apply)", t2, t3),
                    ("evaluate", t3, t4),
                    ("summary", t4, t5),
                    ("explanation inputs (every evaluation)", t5, t6),
                    ("serialise the state to JSON text", t6, t7),
                ):
                    spent[step] += end - start
    print(f"  steps, CPU µs per event, {len(rulesets)} rulesets (second pass, same events):")
    for step, seconds in spent.items():
        print(f"    {step:<40} {seconds / n_events * 1e6:6.1f}")
    print(f"    {'sum':<40} {sum(spent.values()) / n_events * 1e6:6.1f}")


if __name__ == "__main__":
    main()
