#!/usr/bin/env python3
"""panostage benchmark: every measured goal in one run, as one table (or --json).

This is the command line and the report; the rows are measured by a module per family in scripts/benchrows/,
each saying what it measures and the goals it checks:

  row (--only)   module          measures                                          goal
  cold_start     startup.py      `panostage --help`, a fresh process each time     <= 150 ms median
  throughput     throughput.py   authority ProvisionDevice/s, real key generation  >= 200/s
  stage          staging.py      `panostage stage`, cold CLI and warm in-process,  <= 0.20x the recipe; the
                                 vs the documented aws-cli recipe                  agent's overhead <= 50 ms p99
  trust          trust.py        peak RSS of stage over a 1 GiB junk archive and   <= 100 MiB each;
                                 of verify on a 3 GiB file; the checks before      checks <= 5 ms
                                 ProvisionDevice on the warm path
  daemon         daemon.py       (root) udev event -> stick ready, one stick and   ready p99 <= 60 ms; eight
                                 eight at once (the service near and 100 ms away);  <= 3x one (2x far); idle
                                 the idle daemon's RSS and wake-ups                <= 60 MiB, no periodic
  stations       stations.py     (root) two daemons, four sticks each, one         all ready <= 2x one stick
                                 authority in its own process
  soak           soak.py         (root) --soak N hand-offs through one daemon in   last tenth p95 <= 1.2x the
                                 bursts; fds, threads, SQLite handles, RSS         first; held end <= start
  idle_followup  soak.py         (root) the idle daemon following 1,000 staged     <= 1 % of a core; one stick
                                 entries; one stick while follow-up passes run     p99 <= nothing staged

benchrows/kit.py holds what every row measures with, benchrows/rig.py the daemon rows' rig (udevd, loop devices).
Run: scripts/bench [--runs N] [--soak N] [--only stage] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

from benchrows.daemon import bench_daemon
from benchrows.kit import Row
from benchrows.soak import bench_idle_followup, bench_soak
from benchrows.staging import bench_stage
from benchrows.startup import bench_cold_start
from benchrows.stations import bench_stations
from benchrows.throughput import bench_throughput
from benchrows.trust import bench_trust

ROWS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "cold_start": lambda a: bench_cold_start(a.runs),
    "throughput": lambda a: bench_throughput(a.calls, a.threads),
    "stage": lambda a: bench_stage(a.runs),
    "daemon": lambda a: bench_daemon(a.runs, a.idle_seconds),
    "trust": lambda a: bench_trust(a.runs),
    "stations": lambda a: bench_stations(a.runs),
    "soak": lambda a: bench_soak(a.soak),
    "idle_followup": lambda a: bench_idle_followup(a.runs, max(a.idle_seconds, 60.0)),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="panostage benchmark")
    parser.add_argument("--runs", type=int, default=15, help="repetitions per timed row")
    parser.add_argument("--calls", type=int, default=2000, help="ProvisionDevice calls for the throughput row")
    parser.add_argument("--threads", type=int, default=4, help="client threads for the throughput row")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="window for the idle daemon's wake-ups")
    parser.add_argument("--soak", type=int, default=300, help="hand-offs for the soak row")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run, of {', '.join(ROWS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser.parse_args()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def print_table(rows: list[Row], host: dict[str, Any]) -> None:
    """The rows aligned, met as yes / NO / - (no goal); the steps of rows that have them; the machine."""
    width = max(len(r["row"]) for r in rows)
    vwidth = max(len(r["value"]) for r in rows)
    print(f"{'measure':<{width}}  {'result':<{vwidth}}  {'goal':<20}  met")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['row']:<{width}}  {r['value']:<{vwidth}}  {r['goal']:<20}  {met}")
    for r in rows:
        if "steps_median_ms" in r.get("data", {}):
            print(
                f"{r['row']}, steps (median ms): "
                + ", ".join(f"{k} {v}" for k, v in r["data"]["steps_median_ms"].items())
            )
    print(
        f"machine: {host['cpus']} cpus, python {host['python']}, kernel {host['kernel']}, load {host['load_average_1m']}"
    )


def main() -> int:
    args = parse_args()
    rows: list[Row] = []
    for name in args.only.split(","):
        rows += ROWS[name.strip()](args)
    host = machine()
    if args.json:
        print(json.dumps({"machine": host, "rows": rows}, indent=2))
    else:
        print_table(rows, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
