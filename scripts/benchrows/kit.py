"""What every row measures with: timing a command, summaries and quantiles, a clean environment, an authority
of its own, the warm staging path in this process, and the shape of a row (``make_row``) that scripts/bench.py
prints as the table or as JSON."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the agent (and tests/proc_kit.py) importable, as from the checkout
KEY, SECRET, REGION = "AKIDBENCH0000000001", "bench-secret-0123456789", "us-east-1"
PANOSTAGE = [sys.executable, "-m", "agent"]
MIB = 1 << 20

Row = dict[str, Any]


def make_row(row: str, value: str, goal: str, met: bool | None, data: dict[str, Any]) -> Row:
    """One line of the report: what was measured, the result, the goal, whether it was met (None: no goal)."""
    return {"row": row, "value": value, "goal": goal, "met": met, "data": data}


def skipped(row: str, reason: str, goal: str = "-") -> list[Row]:
    """The row saying why this machine cannot run a family of rows."""
    return [make_row(row, "skipped", goal, None, {"reason": reason})]


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "p99": round(pct(values, 0.99), 2),
        "min": round(min(values), 2),
        "runs": len(values),
    }


def spread(stats: dict[str, float], places: int = 0) -> str:
    """A summary as the table says it: "N ms median, p99 M ms"."""
    return f"{stats['median']:.{places}f} ms median, p99 {stats['p99']:.{places}f} ms"


def cpu_spent(before: Any, after: Any) -> float:
    """Seconds of CPU (user and system) between two ``psutil.Process.cpu_times()``."""
    return after.user + after.system - before.user - before.system


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANOSTAGE_", "AWS_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "xdg"),
        PANOSTAGE_SYSTEM_CONFIG=str(home / "none.toml"),
        AWS_CONFIG_FILE=str(home / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        **extra,
    )
    return env


@contextmanager
def authority(home: Path, *args: str) -> Iterator[dict[str, Any]]:
    """A `panostage authority serve` process of its own, with known credentials."""
    env = clean_env(home, PANOSTAGE_AUTHORITY_ACCESS_KEY_ID=KEY, PANOSTAGE_AUTHORITY_SECRET_ACCESS_KEY=SECRET)
    argv = [*PANOSTAGE, "authority", "serve", "--port", "0", "--state-dir", str(home / "authority"), *args]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        info["pid"] = proc.pid
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def timed(command: list[str], env: dict[str, str], *, shell: bool = False) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        command if not shell else command[0],
        env=env,
        cwd=ROOT,
        shell=shell,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"{command[0] if shell else ' '.join(command)} failed: {result.stderr.decode()[-500:]}")
    return elapsed


def warm_stager(tmp: Path, **env: str) -> tuple[Any, Any]:
    """The warm path, as the daemon holds it: one process, one backend, one Stager (``replace`` on), its state
    in ``tmp``/state-warm; ``env`` adds settings (the endpoint of an authority of its own).  Close the backend."""
    from agent.aws.backend import open_backend
    from agent.clock import SystemClock
    from agent.config import load
    from agent.staging.factory import make_stager

    settings = load(
        env={
            **env,
            "PANOSTAGE_PATHS_STATE_DIR": str(tmp / "state-warm"),
            "HOME": str(tmp),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp / "none.toml"),
        }
    ).settings
    backend = open_backend(settings)
    return backend, make_stager(settings, backend, SystemClock(), replace=True)
