"""Row: two stations, four sticks each, one authority - all eight ready against one stick alone.

Two `panostage watch` daemons (own state, own plan, own enrolled sticks, station names of their own)
share one `panostage authority serve` process, as two laptops share the service.  Imported by
scripts/bench.py (``--only stations``; root: udevd and loop devices).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import KEY, REGION, SECRET, SERVICE_ROUND_TRIP_MS, DaemonRig, authority, summary, udevd_running


def _station(tmp: Path, name: str, url: str, count: int, volid_base: int) -> DaemonRig:
    tmp.mkdir()
    rig = DaemonRig(tmp)
    rig.volid = volid_base
    rig.env.update(
        PANOSTAGE_BACKEND_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        PANOSTAGE_STAGE_STATION=name,
    )
    plan = tmp / "plan.csv"
    plan.write_text("name\n" + "".join(f"{name}-{n:03d}\n" for n in range(count)))
    rig.cli("plan", "import", str(plan))
    return rig


def _ready_together(rigs: list[DaemonRig], devs: list[set[str]], timeout: float = 120) -> list[dict[str, float]]:
    """When each stick of each station is seen ready: one poller for all (two would steal the CPU measured)."""
    from agent.state import StateDB

    states = [StateDB(rig.tmp / "state") for rig in rigs]
    seen: list[dict[str, float]] = [{} for _ in rigs]
    deadline = time.monotonic() + timeout
    while any(len(got) < len(want) for got, want in zip(seen, devs)):
        for state, want, got in zip(states, devs, seen):
            for stick in state.sticks():
                if stick["devnode"] in want and stick["devnode"] not in got:
                    if stick["state"] == "ready":
                        got[stick["devnode"]] = time.perf_counter()
                    elif stick["state"] in ("failed", "rejected", "idle", "left"):
                        raise RuntimeError(f"{stick['devnode']}: {stick['state']}: {stick['reason']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all ready in {timeout}s")
        time.sleep(0.005)
    for state in states:
        state.close()
    return seen


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
            for operation in ("ProvisionDevice", "ListDevices", "DescribeDevice", "DeleteDevice"):
                rigs[0].cli("authority", "fault", "set", operation, f"latency_ms={latency_ms}")
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
                for rig, at in zip(rigs, _ready_together(rigs, devs))
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


def bench_stations(runs: int) -> list[dict[str, Any]]:
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("udevadm"):
        return [
            {
                "row": "two stations rows",
                "value": "skipped",
                "goal": "-",
                "met": None,
                "data": {"reason": "needs root, udev"},
            }
        ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name, udevd_running():
        for latency, label in ((0, ""), (SERVICE_ROUND_TRIP_MS, f"  same, service {SERVICE_ROUND_TRIP_MS} ms away")):
            got = _two_stations(Path(tmp_name) / f"latency{latency}", runs, latency)
            rows.append(
                {
                    "row": label or "two stations, four sticks each, one authority: all ready",
                    "value": f"{got['all_ms']:.0f} ms = {got['ratio']:.2f}x one stick ({got['single']['median']:.0f} ms)",
                    "goal": "<= 2x one stick",
                    "met": got["ratio"] <= 2.0,
                    "data": {"latency_ms": latency, **got},
                }
            )
    return rows
