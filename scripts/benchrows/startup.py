"""Row ``cold_start``: `panostage --help` in a fresh process each time, the page cache warm as for a second
invocation (median, p99; python alone beside it).  Goal: <= 150 ms median."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchrows.kit import PANOSTAGE, Row, clean_env, make_row, spread, summary, timed


def bench_cold_start(runs: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(Path(tmp))
        timed([*PANOSTAGE, "--help"], env)  # warm the page cache, as a second invocation would be
        times = [timed([*PANOSTAGE, "--help"], env) for _ in range(runs)]
        baseline = [timed([sys.executable, "-c", "pass"], env) for _ in range(runs)]
    stats = summary(times)
    return [
        make_row(
            "cli cold start (panostage --help)",
            spread(stats),
            "<= 150 ms",
            stats["median"] <= 150,
            {**stats, "python_alone_ms": summary(baseline)},
        )
    ]
