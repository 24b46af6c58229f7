"""Rows for the stick-trust promises: memory that does not follow the attacker, and the price of looking
before writing.  Imported by scripts/bench.py (``--only trust``).

* peak RSS of ``stage --replace`` onto a stick holding a 1 GiB junk ``certificates-omni_x.zip``, beside the
  same stage onto a clean stick (goal <= 100 MiB);
* peak RSS of ``verify`` on a 3 GiB file, beside ``verify`` of a real archive (goal <= 100 MiB);
* the checks added before ProvisionDevice (census of the FAT, room for the name, the log can take the
  record) on the warm path's 64 MiB FAT32 stick, beside the whole warm hand-off (goal <= 5 ms median).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import PANOSTAGE, ROOT, clean_env, summary

MIB = 1 << 20


def peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``command``; its exit code and its peak resident memory in MiB.

    Read as the kernel's high-water mark of the process's own memory (``VmHWM``), polled until it exits:
    ``ru_maxrss`` would also count the pages of this (large) process it was forked from.
    """
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kib = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    return proc.returncode, peak_kib / 1024


def _fat_image(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    subprocess.run(["mkfs.fat", "-F", "32", str(path)], check=True, capture_output=True)
    return path


def _memory_rows(tmp: Path) -> list[dict[str, Any]]:
    env = clean_env(tmp, PANOSTAGE_PATHS_STATE_DIR=str(tmp / "state"))
    clean = _fat_image(tmp / "clean.img", 64 * MIB)
    junk = _fat_image(tmp / "junk.img", 1200 * MIB)
    _copy_junk(junk, 1 << 30)  # mtools writes every byte: the junk really is on the stick
    rc_clean, base = peak_rss([*PANOSTAGE, "stage", "--name", "mem-clean", "--to", str(clean)], env)
    rc_junk, peak = peak_rss([*PANOSTAGE, "stage", "--name", "mem-junk", "--to", str(junk), "--replace"], env)
    huge = tmp / "certificates-omni_huge.zip"
    with open(huge, "wb") as handle:
        handle.truncate(3 << 30)
    rc_ok, verify_base = peak_rss([*PANOSTAGE, "verify", str(clean)], env)
    rc_huge, verify_peak = peak_rss([*PANOSTAGE, "verify", str(huge)], env)
    return [
        {
            "row": "stage --replace onto a stick holding a 1 GiB junk archive: peak RSS",
            "value": f"{peak:.0f} MiB (exit {rc_junk}) vs {base:.0f} MiB onto a clean stick (exit {rc_clean})",
            "goal": "<= 100 MiB",
            "met": rc_junk == 0 and peak <= 100,
            "data": {"peak_mib": round(peak, 1), "clean_mib": round(base, 1), "exit": rc_junk},
        },
        {
            "row": "verify a 3 GiB file: peak RSS",
            "value": f"{verify_peak:.0f} MiB (exit {rc_huge}) vs {verify_base:.0f} MiB for a real archive (exit {rc_ok})",
            "goal": "<= 100 MiB",
            "met": rc_huge == 22 and verify_peak <= 100,
            "data": {"peak_mib": round(verify_peak, 1), "archive_mib": round(verify_base, 1), "exit": rc_huge},
        },
    ]


def _copy_junk(image: Path, size: int) -> None:
    """A ``size``-byte file of zeros at the archive's name, written by mtools from a sparse source."""
    source = image.with_name("junk.src")
    with open(source, "wb") as handle:
        handle.truncate(size)
    try:
        subprocess.run(
            ["mcopy", "-i", str(image), str(source), "::/certificates-omni_x.zip"],
            check=True,
            env={**os.environ, "MTOOLSRC": "/dev/null"},
            capture_output=True,
            timeout=600,
        )
    finally:
        source.unlink()


def _checks_row(tmp: Path, runs: int) -> dict[str, Any]:
    from agent.aws.backend import open_backend
    from agent.clock import SystemClock
    from agent.config import load
    from agent.handoff_log import HandoffLog
    from agent.staging.factory import make_stager
    from agent.stick import open_target

    image = _fat_image(tmp / "warm.img", 64 * MIB)
    settings = load(
        env={
            "PANOSTAGE_PATHS_STATE_DIR": str(tmp / "state-warm"),
            "HOME": str(tmp),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp / "none.toml"),
        }
    ).settings
    backend = open_backend(settings)
    stager = make_stager(settings, backend, SystemClock(), replace=True)
    log = HandoffLog(tmp / "state-warm")
    checks: list[float] = []
    stages: list[float] = []
    try:
        for n in range(runs + 1):
            with open_target(str(image)) as target:
                start = time.perf_counter()
                target.check_sound()
                target.check_room("certificates-omni_bench.zip", 64 * 1024)
                log.check_appendable()
                checked = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            with open_target(str(image)) as target:
                stager.stage({"Name": f"checks-{n}"}, target)
            if n:  # the first pays client creation
                checks.append(checked)
                stages.append((time.perf_counter() - start) * 1000)
    finally:
        backend.close()
    cost, whole = summary(checks), statistics.median(stages)
    return {
        "row": "checks before ProvisionDevice (census, room, log), warm 64 MiB FAT32 stick",
        "value": f"{cost['median']:.2f} ms median (p99 {cost['p99']:.2f}) of a {whole:.0f} ms warm hand-off "
        f"= {cost['median'] / whole:.2f}x",
        "goal": "<= 5 ms",
        "met": cost["median"] <= 5,
        "data": {"checks": cost, "warm_stage_median_ms": whole},
    }


def bench_trust(runs: int) -> list[dict[str, Any]]:
    if not all(Path(p).exists() for p in ("/usr/bin/mcopy", "/sbin/mkfs.fat")):
        return [
            {
                "row": "stick trust rows",
                "value": "skipped",
                "goal": "-",
                "met": None,
                "data": {"reason": "needs mtools and dosfstools"},
            }
        ]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        return [*_memory_rows(tmp), _checks_row(tmp, runs)]
