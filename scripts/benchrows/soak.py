"""Rows ``soak`` and ``idle_followup`` (root: udevd, loop devices): a day of sticks, the long run and the idle
daemon with follow-up work.

* soak: N hand-offs (``--soak``, default 300) through one ``panostage watch`` (embedded authority), sticks
  plugged in bursts of 1, 4, 2, 3; the last tenth's p95 attach -> ready against the first tenth's (goal
  <= 1.2x), and descriptors, threads and SQLite handles back to where they were after a warm-up burst.
* idle_followup: the idle daemon following 1,000 staged plan entries (goal <= 1 % of one core, main-thread
  wake-ups <= watchdog pings + 2); then sticks one at a time while follow-up passes run back to back, against
  as many through a daemon with nothing staged (goal p99 no worse).

No `stick enroll` per stick: each daemon admits only the FAT label of this run (no other stick on the machine
has it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchrows.kit import MIB, PANOSTAGE, ROOT, Row, cpu_spent, make_row, pct, skipped, summary
from benchrows.rig import DaemonRig, udevd_running

BURSTS = (1, 4, 2, 3)
HELD = ("fds", "threads", "wal")  # what must come back to the baseline (tests/proc_kit.py)
STAGED = 1000
SOAK_POLL_SECONDS = 2
WATCHDOG_USEC = "30000000"  # WatchdogSec=30, as in systemd/panostage.service
BACK_TO_BACK = {"PANOSTAGE_DAEMON_POLL_SECONDS": "0.2", "PANOSTAGE_DAEMON_POLL_MAX_SECONDS": "0.2"}


def _skipped(row: str) -> list[Row] | None:
    """A row saying why, when this machine cannot run the daemon rows."""
    missing = [tool for tool in ("losetup", "udevadm", "mkfs.fat") if not shutil.which(tool)]
    if os.geteuid() == 0 and not missing:
        return None
    return skipped(row, "needs root (loop devices, udevd)" if os.geteuid() else f"needs {', '.join(missing)}")


class LabelRig(DaemonRig):
    """A DaemonRig admitting every stick with this run's FAT label (no enrollment); it remembers the loop
    devices it attached (to detach them whatever happens) and can keep the daemon's notify socket open."""

    def __init__(self, tmp: Path, label: str, volid: int) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp)
        self.label, self.volid, self.starts = label, volid, 0
        self.env.update(PANOSTAGE_STICKS_REQUIRE_ENROLLMENT="false", PANOSTAGE_STICKS_LABEL=label)
        self.attached: set[str] = set()
        self.notify: socket.socket | None = None
        self.log: Path | None = None

    def image(self, name: str) -> Path:
        self.volid += 1
        path = self.tmp / f"{name}.img"
        subprocess.run(
            ["mkfs.fat", "-C", "-F", "16", "-n", self.label, "-i", f"{self.volid:08X}", str(path), "16384"],
            check=True,
            capture_output=True,
        )
        return path

    def attach(self, image: Path) -> str:
        dev = super().attach(image)
        self.attached.add(dev)
        return dev

    def detach(self, dev: str, timeout: float = 30) -> None:
        self.attached.discard(dev)
        super().detach(dev, timeout)

    def start(self, watchdog: bool = False, **env: str) -> int:  # type: ignore[override]
        """`panostage watch`; with ``watchdog`` under WatchdogSec=30 as the unit runs it, the notify socket kept
        open (to count WATCHDOG=1).  Without, no pass waits for a ping: the loop wakes when one is due."""
        self.starts += 1
        path, self.log = self.tmp / "notify.sock", self.tmp / f"watch-{self.starts}.log"
        path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(path))
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*PANOSTAGE, "watch"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={
                    **self.env,
                    "NOTIFY_SOCKET": str(path),
                    **env,
                    **({"WATCHDOG_USEC": WATCHDOG_USEC} if watchdog else {}),
                },
            )
        deadline = time.monotonic() + 60
        while b"READY=1" not in self.receive(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"panostage watch not ready (exit {self.proc.poll()}); {self.log_tail()}")
        if not watchdog:
            self.notify.close()
            self.notify = None
        return self.proc.pid

    def receive(self, timeout: float) -> bytes:
        """One datagram from the daemon, or b"" after ``timeout`` seconds (0: at once)."""
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0 and nothing there
            return b""

    def pings(self, seconds: float) -> int:
        """WATCHDOG=1 datagrams received over the next ``seconds`` (the bench sleeps in recv meanwhile)."""
        while self.receive(0):  # what came before the window
            pass
        deadline, count = time.monotonic() + seconds, 0
        while (left := deadline - time.monotonic()) > 0:
            count += b"WATCHDOG=1" in self.receive(left).split(b"\n")
        return count

    def ready_at(self, devs: set[str], timeout: float = 60) -> dict[str, float]:
        """As DaemonRig's, but a state left by an earlier event on the same /dev/loopN (rejected, idle, left) is
        waited past, not taken for this stick's; "failed" ends the wait, as does ``timeout``, with the log."""
        from agent.state import StateDB

        state, seen, last = StateDB(self.tmp / "state"), {}, {}
        deadline = time.monotonic() + timeout
        try:
            while len(seen) < len(devs):
                for stick in state.sticks():
                    dev = stick["devnode"]
                    if dev in devs and dev not in seen:
                        if stick["state"] == "ready":
                            seen[dev] = time.perf_counter()
                        elif stick["state"] == "failed":
                            raise RuntimeError(f"{dev}: failed: {stick['reason']}; {self.log_tail()}")
                        last[dev] = f"{stick['state']}: {stick['reason']}"
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"not ready in {timeout:g}s: {sorted(devs - set(seen))} {last}; {self.log_tail()}"
                    )
                time.sleep(0.005)
        finally:
            state.close()
        return seen

    def log_tail(self) -> str:
        return f"daemon log: {self.log.read_text(errors='replace')[-800:]}" if self.log else "no daemon log"

    def stop(self) -> None:
        """SIGTERM (SIGKILL if the daemon is still there a minute on); the notify socket closed."""
        proc, self.proc, notify, self.notify = self.proc, None, self.notify, None
        if notify is not None:
            notify.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Whatever happened: every loop device we attached detached (by device), the daemon stopped."""
        for dev in sorted(self.attached):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.attached.clear()
        self.stop()


def _quantiles(values: list[float]) -> dict[str, float]:
    return {**{f"p{q}": round(pct(values, q / 100), 1) for q in (50, 95, 99)}, "runs": len(values)}


def _resources(pid: int) -> dict[str, Any]:
    """The daemon's descriptors, threads, SQLite handles (its HTTP keep-alive pool apart: tests/proc_kit.py), RSS."""
    import psutil

    from tests.proc_kit import resources

    return {**resources(pid), "rss_mib": round(psutil.Process(pid).memory_info().rss / MIB, 1)}


def _settled(pid: int, base: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """The daemon's resources once back to ``base`` (or as they are ``timeout`` seconds on)."""
    start = time.monotonic()
    while True:
        now = _resources(pid)
        if all(now[key] <= base[key] for key in HELD) or time.monotonic() - start > timeout:
            return {**now, "settle_seconds": round(time.monotonic() - start, 2)}
        time.sleep(0.25)


def _burst(rig: LabelRig, size: int, prefix: str) -> list[float]:
    """Plug ``size`` fresh sticks at once, wait for all ready, unplug them all: ms attach -> ready of each."""
    images, attached = [rig.image(f"{prefix}-{k}") for k in range(size)], {}
    for image in images:
        start = time.perf_counter()
        attached[rig.attach(image)] = start
    ready = rig.ready_at(set(attached))
    for dev, image in zip(attached, images):
        rig.detach(dev)
        image.unlink()
    return [(ready[dev] - start) * 1000 for dev, start in attached.items()]


def bench_soak(count: int) -> list[Row]:
    """N hand-offs in bursts through one daemon: latency first tenth vs last, resources start vs end."""
    if skipped := _skipped("soak rows"):
        return skipped
    pid = os.getpid()
    with tempfile.TemporaryDirectory() as tmp_name, udevd_running():
        rig = LabelRig(Path(tmp_name), f"SOAK{pid % 1000}", 0x5A000000 + (pid % 2048) * 8192)
        try:
            rig.import_plan("soak", count + 8, digits=4)
            daemon = rig.start(PANOSTAGE_DAEMON_POLL_SECONDS=str(SOAK_POLL_SECONDS))  # passes during the run
            _burst(rig, 8, "warm")  # twice a burst: the client's pool grows past what a burst and a pass need
            deadline = time.monotonic() + 30
            while _resources(daemon)["wal"] < 2:  # the follow-up thread's connection: part of the baseline
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no follow-up pass 30 s after the warm-up; {rig.log_tail()}")
                time.sleep(0.1)
            base, took, burst, started = _resources(daemon), [], 0, time.perf_counter()
            while len(took) < count:
                took += _burst(rig, min(BURSTS[burst % len(BURSTS)], count - len(took)), f"s{len(took)}")
                burst += 1
            seconds, end = time.perf_counter() - started, _settled(daemon, base)
            followed = sum(entry["status"] != "pending" for entry in rig.cli("plan", "list"))
        finally:
            rig.close()
    tenth = max(1, count // 10)
    first, last = _quantiles(took[:tenth]), _quantiles(took[-tenth:])
    ratio, growth = last["p95"] / first["p95"], round(end["rss_mib"] - base["rss_mib"], 1)
    return [
        make_row(
            f"soak: {count} hand-offs in bursts, last tenth p95 vs first",
            f"{last['p95']:.0f} ms vs {first['p95']:.0f} ms = {ratio:.2f}x (p50 {last['p50']:.0f} vs "
            f"{first['p50']:.0f}, p99 {last['p99']:.0f} vs {first['p99']:.0f})",
            "<= 1.2x",
            ratio <= 1.2,
            {
                "first_tenth_ms": first,
                "last_tenth_ms": last,
                "ratio_p95": round(ratio, 3),
                "all_ms": summary(took),
                "bursts": burst,
                "run_seconds": round(seconds, 1),
                "entries_past_pending": followed,
            },
        ),
        make_row(
            "soak: descriptors / threads / SQLite handles / RSS, start -> end",
            f"fds {base['fds']}->{end['fds']}, threads {base['threads']}->{end['threads']}, SQLite "
            f"{base['wal']}->{end['wal']} (descriptors kept {base['database']}->{end['database']}), HTTP pool "
            f"{base['http_connections']}->{end['http_connections']}, RSS {base['rss_mib']:.1f}->{end['rss_mib']:.1f} "
            f"MiB ({growth:+.1f})",
            "end <= start (RSS reported)",
            all(end[key] <= base[key] for key in HELD),
            {"start": base, "end": end, "rss_growth_mib": growth},
        ),
    ]


def _seed_staged(rig: LabelRig, count: int) -> float:
    """``count`` plan entries already staged, each with its device waiting in the embedded authority's store
    (the daemon's own, in its state directory); seconds taken."""
    from agent.aws.backend import open_backend
    from agent.config import load
    from agent.state import StateDB

    start, names = time.perf_counter(), [f"idle-{n:04d}" for n in range(count)]
    backend = open_backend(load(env=rig.env).settings)
    try:
        client = backend.panorama()
        with ThreadPoolExecutor(4) as pool:
            devices = list(pool.map(lambda name: client.provision_device(Name=name)["DeviceId"], names))
    finally:
        backend.close()
    state = StateDB(rig.tmp / "state")
    try:
        for entry_id, device_id in zip(state.add_entries([(name, {"Name": name}, {}) for name in names]), devices):
            state.set_entry(entry_id, status="staged", device_id=device_id)
    finally:
        state.close()
    return time.perf_counter() - start


def _idle_window(rig: LabelRig, pid: int, seconds: float) -> dict[str, Any]:
    """CPU of the whole daemon, voluntary switches of its main thread, and watchdog pings over ``seconds``."""
    import psutil
    import pyudev

    def switches() -> int:
        status = Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("voluntary_ctxt_switches")))

    proc = psutil.Process(pid)
    others = pyudev.Monitor.from_netlink(pyudev.Context())  # block events on the machine wake the daemon too
    others.filter_by("block")
    others.start()
    time.sleep(1.0)  # start-up's aftermath settles; a measurement window, not synchronisation
    cpu0, wake0, wall0 = proc.cpu_times(), switches(), time.perf_counter()
    pings = rig.pings(seconds)
    cpu1, wake1, wall = proc.cpu_times(), switches(), time.perf_counter() - wall0
    cpu = cpu_spent(cpu0, cpu1)
    return {
        "cpu_percent": round(100 * cpu / wall, 2),
        "cpu_seconds": round(cpu, 3),
        "wakeups": wake1 - wake0,
        "watchdog_pings": pings,
        "window_seconds": round(wall, 1),
        "rss_mib": round(proc.memory_info().rss / MIB, 1),
        "block_uevents_on_the_machine": sum(1 for _ in iter(lambda: others.poll(timeout=0), None)),
    }


def bench_idle_followup(runs: int, seconds: float) -> list[Row]:
    """The idle daemon following 1,000 staged entries; then sticks while passes run, against none staged."""
    import psutil

    if skipped := _skipped("idle daemon with follow-up rows"):
        return skipped
    label, volid = f"IDLE{os.getpid() % 1000}", 0x5B000000 + (os.getpid() % 2048) * 8192
    with tempfile.TemporaryDirectory() as tmp_name, udevd_running():
        fresh, busy = (
            LabelRig(Path(tmp_name) / "fresh", label, volid),
            LabelRig(Path(tmp_name) / "staged", label, volid + 4096),
        )
        try:
            fresh.import_plan("fresh", runs + 1, digits=4)
            images = [fresh.image(f"b{n}") for n in range(runs + 1)]
            fresh.start(**BACK_TO_BACK)
            baseline = fresh.one_at_a_time(images)  # its first stick pays for the clients: not counted
            fresh.close()
            seeded = _seed_staged(busy, STAGED)
            busy.import_plan("arrive", runs + 1, digits=4)
            idle = _idle_window(busy, busy.start(watchdog=True, PANOSTAGE_DAEMON_POLL_SECONDS="10"), seconds)
            busy.stop()
            images = [busy.image(f"p{n}") for n in range(runs + 1)]
            proc = psutil.Process(busy.start(**BACK_TO_BACK))
            cpu0, wall0 = proc.cpu_times(), time.perf_counter()
            during = busy.one_at_a_time(images)
            cpu1, wall = proc.cpu_times(), time.perf_counter() - wall0
        finally:
            fresh.close()
            busy.close()
    busy_cpu = round(100 * cpu_spent(cpu0, cpu1) / wall, 1)
    base, under = _quantiles(baseline), _quantiles(during)
    ratio = under["p99"] / base["p99"]
    return [
        make_row(
            f"idle daemon, {STAGED} staged entries followed, over {idle['window_seconds']:.0f} s",
            f"{idle['cpu_percent']:.2f} % of a core, main thread {idle['wakeups']} wake-ups, "
            f"{idle['watchdog_pings']} watchdog pings",
            "<= 1 %, wake-ups <= pings + 2",
            idle["cpu_percent"] <= 1.0 and idle["wakeups"] <= idle["watchdog_pings"] + 2,
            {**idle, "staged": STAGED, "seed_seconds": round(seeded, 1), "poll_seconds": 10},
        ),
        make_row(
            "  one stick while follow-up passes run vs nothing staged",
            f"p99 {under['p99']:.0f} ms vs {base['p99']:.0f} ms = {ratio:.2f}x (p50 {under['p50']:.0f} vs "
            f"{base['p50']:.0f})",
            "p99 <= nothing staged",
            ratio <= 1.0,
            {
                "with_passes_ms": under,
                "nothing_staged_ms": base,
                "ratio_p99": round(ratio, 3),
                "daemon_cpu_percent_with_passes": busy_cpu,
                **BACK_TO_BACK,
            },
        ),
    ]
