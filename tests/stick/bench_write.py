"""Benchmark: write_atomic + read-back of a 5 KB archive vs a bare ``mcopy`` + ``sync``.

Run as root from the repository: ``.venv/bin/python -m tests.stick.bench_write [--runs 30]``.
Prints medians (ms); asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agent.stick import open_target
from agent.stick.mtools import BASE_ENV
from tests.fat_kit import make_image

NAME = "certificates-omni_bench-device.zip"


def median_ms(samples: list[float]) -> str:
    return (
        f"{statistics.median(samples) * 1000:7.2f} ms (p10 {sorted(samples)[len(samples) // 10] * 1000:.2f}, "
        f"p90 {sorted(samples)[len(samples) * 9 // 10] * 1000:.2f})"
    )


def bench_ours(
    spec: str, data: bytes, runs: int, readback: str = "direct"
) -> tuple[list[float], list[float], list[float], dict[str, float]]:
    total, write, read = [], [], []
    steps: dict[str, list[float]] = {}
    with open_target(spec, readback=readback) as target:
        target.write_atomic(NAME, data)  # warm: the first fsync flushes the freshly made image
        for _ in range(runs):
            t0 = time.perf_counter()
            report = target.write_atomic(NAME, data)
            t1 = time.perf_counter()
            back = target.read(NAME, bypass_cache=True)
            t2 = time.perf_counter()
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
            total.append(t2 - t0)
            write.append(t1 - t0)
            read.append(t2 - t1)
            for step, ms in report.durations_ms.items():
                steps.setdefault(step, []).append(ms)
    return total, write, read, {k: statistics.median(v) for k, v in steps.items()}


def bench_mcopy(image: Path, source: Path, runs: int, sync_argv: list[str]) -> list[float]:
    env = {**os.environ, **BASE_ENV}
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["mcopy", "-D", "o", "-i", str(image), str(source), f"::{NAME}"], env=env, check=True)
        subprocess.run(sync_argv, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    data = b"PK\x03\x04" + os.urandom(5 * 1024 - 4)
    with tempfile.TemporaryDirectory() as tmp:
        image = make_image(Path(tmp) / "bench.img", 32)  # 64 MiB FAT32
        subprocess.run(["sync"], check=True)
        total, write, read, steps = bench_ours(str(image), data, args.runs)
        print(f"panostage image  write_atomic+read  {median_ms(total)}")
        print(f"                 write_atomic       {median_ms(write)}")
        print(f"                 read-back O_DIRECT {median_ms(read)}")
        print("                 steps (median ms)  " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
        total, write, read, _ = bench_ours(str(image), data, args.runs, readback="mtools")
        print(f"  readback=mtools write_atomic+read  {median_ms(total)}")
        print(f"                 read-back drop+mcopy {median_ms(read)}")
        source = Path(tmp) / "archive.zip"  # the baseline needs a file on disk (which we never write)
        source.write_bytes(data)
        print(f"mcopy + sync                        {median_ms(bench_mcopy(image, source, args.runs, ['sync']))}")
        print(
            f"mcopy + sync IMAGE (fsync the file) "
            f"{median_ms(bench_mcopy(image, source, args.runs, ['sync', str(image)]))}"
        )
        if os.geteuid() == 0:
            dev = subprocess.run(
                ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
            ).stdout.strip()
            try:
                total, write, read, _ = bench_ours(dev, data, args.runs)
                print(f"panostage loop   write_atomic+read  {median_ms(total)}")
            finally:
                subprocess.run(["losetup", "-d", dev], check=True)


if __name__ == "__main__":
    main()
