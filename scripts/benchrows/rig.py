"""The daemon rows' rig: a systemd-udevd, a `panostage watch` over its own state, FAT images on loop devices as
sticks, and the ratio row of many sticks against one.  Shared by the daemon, stations and soak rows (root)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchrows.kit import KEY, PANOSTAGE, REGION, ROOT, SECRET, Row, clean_env, make_row, skipped

#: The added answer time per call for the "service far away" rows: a regional API round trip.
SERVICE_ROUND_TRIP_MS = 100


def without_udev(row: str) -> list[Row] | None:
    """The skipped row when this machine cannot run a daemon on loop devices (root, losetup, udevadm)."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("udevadm"):
        return skipped(row, "needs root, udev")
    return None


def against_one_stick(
    row: str, all_ms: float, ratio: float, one_ms: float | None, data: dict[str, Any], goal: float = 2.0
) -> Row:
    """Sticks plugged at once, all ready, as a multiple of one stick alone (goal <= ``goal`` x)."""
    alone = "" if one_ms is None else f" ({one_ms:.0f} ms)"
    value = f"{all_ms:.0f} ms = {ratio:.2f}x one stick{alone}"
    return make_row(row, value, f"<= {goal:g}x one stick", ratio <= goal, data)


@contextmanager
def udevd_running() -> Iterator[None]:
    """A systemd-udevd for the daemon rows: the running one, or one started (and stopped) here."""
    ping = ["udevadm", "control", "--ping"]
    if subprocess.run(ping, capture_output=True).returncode == 0:
        yield
        return
    binary = next(p for p in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd") if Path(p).exists())
    before = set(subprocess.run(["pidof", "systemd-udevd"], capture_output=True, text=True).stdout.split())
    for stale in ("/run/udev/watch", "/run/udev/watch.old"):  # an earlier udevd's watches (see tests/udev_kit.py)
        shutil.rmtree(stale, ignore_errors=True)
    subprocess.run([binary, "--daemon"], check=True, capture_output=True)
    subprocess.run(["udevadm", "control", "--ping", "--timeout=10"], check=True, capture_output=True)
    started = set(subprocess.run(["pidof", "systemd-udevd"], capture_output=True, text=True).stdout.split()) - before
    try:
        yield
    finally:
        for pid in started:
            os.kill(int(pid), 15)


def ready_together(rigs: list[DaemonRig], devs: list[set[str]], timeout: float = 120) -> list[dict[str, float]]:
    """Wall time at which each stick of each rig is seen ready, polling their state databases: one poller for
    all (two would steal the CPU measured).  A stick failed, rejected, idle or gone ends the wait."""
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
            raise RuntimeError(f"not ready in {timeout}s: {[want - set(got) for got, want in zip(seen, devs)]}")
        time.sleep(0.005)
    for state in states:
        state.close()
    return seen


class DaemonRig:
    """`panostage watch` over its own state, with FAT images on loop devices enrolled by FS UUID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = clean_env(
            tmp,
            PANOSTAGE_PATHS_STATE_DIR=str(tmp / "state"),
            PANOSTAGE_PATHS_RUNTIME_DIR=str(tmp / "run"),
            PANOSTAGE_STICKS_ALLOW_NON_USB="true",
        )
        self.volid = 0x6B000000 + (os.getpid() % 4096) * 256
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> Any:
        out = subprocess.run([*PANOSTAGE, *args, "--json"], env=self.env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"panostage {' '.join(args)}: {out.stderr[-400:]}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def use_service(self, url: str, **env: str) -> None:
        """Talk to the authority at ``url`` (a process of its own, as the service is) instead of the embedded one."""
        self.env.update(
            PANOSTAGE_BACKEND_ENDPOINT_URL=url,
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
            **env,
        )

    def slow_service(self, latency_ms: int) -> None:
        """The authority of ``use_service`` answers every call the daemon makes ``latency_ms`` late."""
        for operation in ("ProvisionDevice", "ListDevices", "DescribeDevice", "DeleteDevice"):
            self.cli("authority", "fault", "set", operation, f"latency_ms={latency_ms}")

    def import_plan(self, prefix: str, count: int, digits: int = 3) -> None:
        """A plan of ``count`` entries, named ``prefix``-000 on."""
        path = self.tmp / f"{prefix}.csv"
        path.write_text("name\n" + "".join(f"{prefix}-{n:0{digits}d}\n" for n in range(count)))
        self.cli("plan", "import", str(path))

    def image(self, name: str) -> Path:
        self.volid += 1
        volid = f"{self.volid:08X}"
        path = self.tmp / f"{name}.img"
        subprocess.run(["mkfs.fat", "-C", "-F", "16", "-i", volid, str(path), "16384"], check=True, capture_output=True)
        self.cli("stick", "enroll", "--identity", f"fs:{volid[:4]}-{volid[4:]}")
        return path

    def start(self, **env: str) -> int:
        sock_path = self.tmp / "notify.sock"
        sock_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's side of sd_notify
        sock.bind(str(sock_path))
        sock.settimeout(60)
        self.proc = subprocess.Popen(
            [*PANOSTAGE, "watch"],
            cwd=ROOT,
            env={**self.env, "NOTIFY_SOCKET": str(sock_path), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while b"READY=1" not in sock.recv(4096):
            pass
        sock.close()
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def attach(self, image: Path) -> str:
        return subprocess.run(
            ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()

    def detach(self, dev: str, timeout: float = 30) -> None:
        """Detach, and wait until the daemon has forgotten the stick (so a reused /dev/loopN is a new stick)."""
        from agent.state import StateDB

        subprocess.run(["losetup", "-d", dev], capture_output=True)
        state = StateDB(self.tmp / "state")
        deadline = time.monotonic() + timeout
        while any(s["devnode"] == dev for s in state.sticks()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dev} still in view {timeout}s after detaching")
            time.sleep(0.005)
        state.close()

    def one_at_a_time(self, images: list[Path]) -> list[float]:
        """ms from attach to ready for each image but the first (which pays for client creation,
        not what a day of sticks pays), each detached before the next."""
        took = []
        for image in images:
            start = time.perf_counter()
            dev = self.attach(image)
            took.append((self.ready_at({dev})[dev] - start) * 1000)
            self.detach(dev)
        return took[1:]

    def all_at_once(self, images: list[Path]) -> float:
        """ms from attaching the first image to every one of them ready; then detached."""
        start = time.perf_counter()
        devs = {self.attach(image) for image in images}
        took = (max(self.ready_at(devs).values()) - start) * 1000
        for dev in devs:
            self.detach(dev)
        return took

    def ready_at(self, devs: set[str], timeout: float = 120) -> dict[str, float]:
        """Wall time at which each stick is seen ready (polling the state database)."""
        return ready_together([self], [devs], timeout)[0]
