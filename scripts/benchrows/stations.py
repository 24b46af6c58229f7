"""Rows ``stations`` (root: udevd, loop devices): two stations, four sticks each, plugged at once.

Two `panostage watch` daemons (own state, own plan, own enrolled sticks, station names of their own) share one
`panostage authority serve` process, as two laptops share the service; all eight ready against one stick alone
on the first station, with the service as fast as this machine makes it and answering 100 ms late
(goal <= 2x one stick, each).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchrows.kit import Row, authority, summary
from benchrows.rig import (
    SERVICE_ROUND_TRIP_MS,
    DaemonRig,
    against_one_stick,
    ready_together,
    udevd_running,
    without_udev,
)


def _station(tmp: Path, name: str, url: str, count: int, volid_base: int) -> DaemonRig:
    tmp.mkdir()
    rig = DaemonRig(tmp)
    rig.volid = volid_base
    rig.use_service(url, PANOSTAGE_STAGE_STATION=name)
    rig.import_plan(name, count)
    return rig


def _two_stations(tmp: Path, runs: int, latency_ms: int) -> dict[str, Any]:
    """One stick alone on the first station, then four per station at once; the service answers
    ``latency_ms`` late (0: as fast as it can, on this machine)."""
    tmp.mkdir()
    with authority(tmp / "service") as info:
        base = 0x7C000000 + (os.getpid() % 2048) * 2048 + latency_ms * 4
        rigs = [
            _station(tmp / name, name, info["endpoint_url"], runs + 8, base + 512 * i)
            for i, name in enumerate(("warehouse", "van"))
        ]
        if latency_ms:
            rigs[0].slow_service(latency_ms)
        singles = [rigs[0].image(f"one{n}") for n in range(runs)]
        warmups = [rig.image("warm") for rig in rigs[1:]]
        batches = [[rig.image(f"four{n}") for n in range(4)] for rig in rigs]
        for rig in rigs:
            rig.start()
        try:
            single = summary(rigs[0].one_at_a_time(singles))  # its first stick, which pays for the client, not counted
            for rig, image in zip(rigs[1:], warmups):  # the other station warm alike: its first stick pays as much
                rig.one_at_a_time([image])
            start = time.perf_counter()
            devs = [{rig.attach(image) for image in batch} for rig, batch in zip(rigs, batches)]
            took = {
                rig.env["PANOSTAGE_STAGE_STATION"]: (max(at.values()) - start) * 1000
                for rig, at in zip(rigs, ready_together(rigs, devs))
            }
            for rig, attached in zip(rigs, devs):
                for dev in attached:
                    rig.detach(dev)
        finally:
            for rig in rigs:
                rig.stop()
    return {
        "single": single,
        "per_station_ms": {k: round(v, 1) for k, v in took.items()},
        "all_ms": round(max(took.values()), 1),
        "ratio": round(max(took.values()) / single["median"], 3),
    }


def bench_stations(runs: int) -> list[Row]:
    if skip := without_udev("two stations rows"):
        return skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name, udevd_running():
        for latency, label in ((0, ""), (SERVICE_ROUND_TRIP_MS, f"  same, service {SERVICE_ROUND_TRIP_MS} ms away")):
            got = _two_stations(Path(tmp_name) / f"latency{latency}", runs, latency)
            rows.append(
                against_one_stick(
                    label or "two stations, four sticks each, one authority: all ready",
                    got["all_ms"],
                    got["ratio"],
                    got["single"]["median"],
                    {"latency_ms": latency, **got},
                )
            )
    return rows
