"""Rows ``stage``: `panostage stage` to a 64 MiB FAT32 image against the documented aws-cli recipe
(provision-device | base64 -d; mcopy; sync), same authority (its own process), interleaved so drift hits all
alike; the cold CLI and the warm in-process path (what the daemon runs) side by side, median and p99.

Goals: each path <= 0.20x the recipe; the agent's own overhead on the warm path (the hand-off minus the service
call and the stick's I/O) <= 50 ms p99.  Skipped without awscli in the venv, mtools and dosfstools.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchrows.kit import (
    KEY,
    PANOSTAGE,
    REGION,
    ROOT,
    SECRET,
    Row,
    authority,
    clean_env,
    make_row,
    skipped,
    spread,
    summary,
    timed,
    warm_stager,
)

RECIPE = (
    "aws panorama provision-device --name {name} --endpoint-url {url} --query Certificates --output text"
    " | base64 --decode > {tmp}/{name}.zip"
    " && mcopy -o -i {image} {tmp}/{name}.zip ::/certificates-omni_{name}.zip && sync; rm -f {tmp}/{name}.zip"
)


def bench_stage(runs: int) -> list[Row]:
    from agent.stick import open_target

    aws = Path(sys.executable).with_name("aws")
    if not aws.exists() or not shutil.which("mcopy") or not shutil.which("mkfs.fat"):
        return skipped(
            "stage vs aws-cli recipe", "needs awscli in the venv, mtools and dosfstools", goal="<= 1/5 of the recipe"
        )
    with tempfile.TemporaryDirectory() as tmp_name, authority(Path(tmp_name), "--job-step-seconds", "0.5") as info:
        tmp = Path(tmp_name)
        url = info["endpoint_url"]
        images = {}
        for kind in ("recipe", "cold", "warm"):
            images[kind] = tmp / f"{kind}.img"
            subprocess.run(["mkfs.fat", "-C", "-F", "32", str(images[kind]), "65536"], check=True, capture_output=True)
        data_path = subprocess.run(
            [*PANOSTAGE, "config", "data-path"], capture_output=True, text=True, cwd=ROOT, env=clean_env(tmp)
        ).stdout.strip()
        scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp  # the recipe's zip: keep it off the disk
        env = clean_env(
            tmp,
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
            AWS_DATA_PATH=data_path,
            PATH=f"{aws.parent}:{os.environ['PATH']}",
            PANOSTAGE_BACKEND_ENDPOINT_URL=url,
            PANOSTAGE_BACKEND_REGION=REGION,
            PANOSTAGE_PATHS_STATE_DIR=str(tmp / "state-cold"),
        )
        # the warm path: one process, one backend, one Stager, as the daemon holds them
        os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
        backend, stager = warm_stager(tmp, PANOSTAGE_BACKEND_ENDPOINT_URL=url, PANOSTAGE_BACKEND_REGION=REGION)
        results: dict[str, list[float]] = {"recipe": [], "cold": [], "warm": []}
        steps: list[dict[str, float]] = []

        def warm(name: str) -> float:
            start = time.perf_counter()
            with open_target(str(images["warm"])) as target:
                result = stager.stage({"Name": name}, target)
            steps.append(result.durations_ms)
            return (time.perf_counter() - start) * 1000

        def recipe(name: str) -> float:
            return timed([RECIPE.format(name=name, url=url, tmp=scratch, image=images["recipe"])], env, shell=True)

        warm("warmup-0")  # first call pays client creation, as the daemon's first stick does
        recipe("warmup-r")
        for n in range(runs):  # interleaved A/B/C so drift hits all three alike
            results["recipe"].append(recipe(f"r-{n}"))
            results["cold"].append(
                timed([*PANOSTAGE, "stage", "--name", f"c-{n}", "--to", str(images["cold"]), "--replace", "-q"], env)
            )
            results["warm"].append(warm(f"w-{n}"))
        backend.close()
    stats = {k: summary(v) for k, v in results.items()}
    recipe_ms = stats["recipe"]["median"]
    # what the agent itself adds: the whole warm hand-off minus the service call and the stick's own I/O
    overhead = [
        total - sum(s.get(k, 0.0) for k in ("provision", "write", "read_back"))
        for total, s in zip(results["warm"], steps[1:])
    ]
    step_medians = {k: round(statistics.median(s.get(k, 0.0) for s in steps[1:]), 2) for k in steps[-1]}
    rows = []
    for kind, label in (("warm", "stage, warm process (daemon path)"), ("cold", "stage, cold CLI process")):
        ratio = stats[kind]["median"] / recipe_ms
        rows.append(
            make_row(
                f"{label} vs aws-cli recipe",
                f"{stats[kind]['median']:.0f} ms (p99 {stats[kind]['p99']:.0f}) vs {recipe_ms:.0f} ms "
                f"(p99 {stats['recipe']['p99']:.0f}) = {ratio:.2f}x",
                "<= 0.20x",
                ratio <= 0.2,
                {
                    "panostage": stats[kind],
                    "recipe": stats["recipe"],
                    "ratio": round(ratio, 3),
                    **({"steps_median_ms": step_medians} if kind == "warm" else {}),
                },
            )
        )
    over = summary(overhead)
    rows.append(
        make_row(
            "agent overhead per stage (warm; minus service call and stick I/O)",
            spread(over, places=1),
            "<= 50 ms p99",
            over["p99"] <= 50,
            over,
        )
    )
    return rows
