"""Rows ``trust``: the stick-trust promises, memory that does not follow the attacker and the price of looking
before writing.

* peak RSS of ``stage --replace`` onto a stick holding a 1 GiB junk ``certificates-omni_x.zip``, beside the
  same stage onto a clean stick (goal <= 100 MiB);
* peak RSS of ``verify`` on a 3 GiB file, beside ``verify`` of a real archive (goal <= 100 MiB);
* the checks added before ProvisionDevice (census of the FAT, room for the name, the log can take the
  record) on the warm path's 64 MiB FAT32 stick, beside the whole warm hand-off (goal <= 5 ms median).

Skipped without mtools and dosfstools; ``BENCH_TMP`` names where the large images go.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchrows.kit import MIB, PANOSTAGE, ROOT, Row, clean_env, make_row, skipped, summary, warm_stager


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


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no room on the disk."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _fat_image(path: Path, size: int) -> Path:
    _sparse(path, size)
    subprocess.run(["mkfs.fat", "-F", "32", str(path)], check=True, capture_output=True)
    return path


def _memory_rows(tmp: Path) -> list[Row]:
    env = clean_env(tmp, PANOSTAGE_PATHS_STATE_DIR=str(tmp / "state"))
    clean = _fat_image(tmp / "clean.img", 64 * MIB)
    junk = _fat_image(tmp / "junk.img", 1200 * MIB)
    _copy_junk(junk, 1 << 30)  # mtools writes every byte: the junk really is on the stick
    clean_run = peak_rss([*PANOSTAGE, "stage", "--name", "mem-clean", "--to", str(clean)], env)
    junk_run = peak_rss([*PANOSTAGE, "stage", "--name", "mem-junk", "--to", str(junk), "--replace"], env)
    huge = _sparse(tmp / "certificates-omni_huge.zip", 3 << 30)
    archive_run = peak_rss([*PANOSTAGE, "verify", str(clean)], env)
    huge_run = peak_rss([*PANOSTAGE, "verify", str(huge)], env)
    return [
        _peak_row(
            "stage --replace onto a stick holding a 1 GiB junk archive: peak RSS",
            junk_run,
            0,
            clean_run,
            "onto a clean stick",
            "clean_mib",
        ),
        _peak_row("verify a 3 GiB file: peak RSS", huge_run, 22, archive_run, "for a real archive", "archive_mib"),
    ]


def _peak_row(row: str, run: tuple[int, float], exit_ok: int, beside: tuple[int, float], what: str, key: str) -> Row:
    """A peak-RSS row: the run on the attacker's input (met if it exits ``exit_ok`` within 100 MiB) beside the
    same command on honest input, named ``what`` in the value and ``key`` in the data."""
    (code, peak), (beside_code, beside_peak) = run, beside
    return make_row(
        row,
        f"{peak:.0f} MiB (exit {code}) vs {beside_peak:.0f} MiB {what} (exit {beside_code})",
        "<= 100 MiB",
        code == exit_ok and peak <= 100,
        {"peak_mib": round(peak, 1), key: round(beside_peak, 1), "exit": code},
    )


def _copy_junk(image: Path, size: int) -> None:
    """A ``size``-byte file of zeros at the archive's name, written by mtools from a sparse source."""
    source = _sparse(image.with_name("junk.src"), size)
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


def _checks_row(tmp: Path, runs: int) -> Row:
    from agent.handoff_log import HandoffLog
    from agent.stick import open_target

    image = _fat_image(tmp / "warm.img", 64 * MIB)
    backend, stager = warm_stager(tmp)
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
    return make_row(
        "checks before ProvisionDevice (census, room, log), warm 64 MiB FAT32 stick",
        f"{cost['median']:.2f} ms median (p99 {cost['p99']:.2f}) of a {whole:.0f} ms warm hand-off "
        f"= {cost['median'] / whole:.2f}x",
        "<= 5 ms",
        cost["median"] <= 5,
        {"checks": cost, "warm_stage_median_ms": whole},
    )


def bench_trust(runs: int) -> list[Row]:
    if not all(Path(p).exists() for p in ("/usr/bin/mcopy", "/sbin/mkfs.fat")):
        return skipped("stick trust rows", "needs mtools and dosfstools")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        return [*_memory_rows(tmp), _checks_row(tmp, runs)]
