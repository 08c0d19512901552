"""Soak: load and faults on PostgreSQL, with the checks that matter to a user.

    python bench/soak.py [--events 50000] [--leads 500] [--clients 8] [--faults pg,kill,receiver]

Two ``leadscore serve`` replicas (no delivery loops) and two ``leadscore worker`` processes on
one throwaway PostgreSQL cluster, a loopback receiver subscribed to every transition, and
concurrent clients sending the events with duplicates and late arrivals. In the middle: the
receiver down, a worker and a replica killed with SIGKILL, PostgreSQL stopped and started.
The machinery and the checks are in ``tests/soak/harness.py`` (shared with the CI test
``tests/soak/test_soak_small.py``). Prints throughput, latency percentiles, memory and CPU of
each process, and the counts checked; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.soak.harness import FAULTS, SoakConfig, print_report, soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--leads", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--faults",
        default=",".join(sorted(FAULTS)),
        help="comma-separated, from pg, kill, receiver; empty for none",
    )
    parser.add_argument("--pg-down", type=float, default=5.0, help="seconds PostgreSQL is down")
    parser.add_argument("--receiver-down", type=float, default=10.0, help="seconds")
    parser.add_argument("--batch-max", type=int, default=25, help="events per request, at most")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    faults = frozenset(f for f in args.faults.split(",") if f)
    unknown = faults - FAULTS
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    config = SoakConfig(
        events=args.events,
        leads=args.leads,
        clients=args.clients,
        faults=faults,
        pg_down_seconds=args.pg_down,
        receiver_down_seconds=args.receiver_down,
        seed=args.seed,
        batch_max=args.batch_max,
        drain_timeout=300.0,
    )
    report = soak(config)
    print_report(report, config.log)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
