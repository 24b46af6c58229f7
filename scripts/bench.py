#!/usr/bin/env python3
"""panostage benchmark: every measured goal in one run, as one table (or --json).

Rows (select with --only NAME,...):
  cold_start     `panostage --help`, a fresh process each time            goal <= 150 ms median
  throughput     authority ProvisionDevice/s, real key generation,        goal >= 200/s
                 client (boto3) in this process, server in its own
  daemon         (root) udev event -> stick ready, one stick (median, p99, goal eight ready <= 2x one;
                 per step) and eight at once, with the embedded         idle <= 60 MiB and no
                 authority and with one in its own process answering    periodic wake-ups
                 100 ms late (a service on the network); the idle
                 daemon's RSS and wake-ups
  trust          peak RSS of stage onto a stick with a 1 GiB junk archive  goal <= 100 MiB each;
                 and of verify on a 3 GiB file; the checks before          checks <= 5 ms
                 ProvisionDevice on the warm path (scripts/bench_trust.py)
  stations       (root) two daemons, four sticks each, one authority        goal all ready <= 2x one stick
                 in its own process (scripts/bench_stations.py)
  soak           (root) --soak N hand-offs through one daemon, sticks in   goal last tenth p95 <= 1.2x
                 bursts of 1,4,2,3; latency first tenth vs last; fds,      the first; fds, threads,
                 threads, SQLite handles, RSS (scripts/bench_soak.py)      SQLite handles end <= start
  idle_followup  (root) the idle daemon following 1,000 staged entries;    goal <= 1 % of a core, main-
                 one stick while follow-up passes run back to back vs     thread wake-ups <= pings + 2;
                 nothing staged (scripts/bench_soak.py)                   p99 <= nothing staged
  stage          `panostage stage` to a FAT image vs the documented        goal <= 1/5 of the recipe
                 aws-cli recipe (provision-device | base64 -d; mcopy;
                 sync), same authority, same kind of image, interleaved;
                 cold CLI and the warm in-process path (what the daemon
                 runs) side by side, median and p99, with the ratio
Run: scripts/bench [--runs N] [--soak N] [--only stage] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY, SECRET, REGION = "AKIDBENCH0000000001", "bench-secret-0123456789", "us-east-1"
PANOSTAGE = [sys.executable, "-m", "agent"]


# ---------------------------------------------------------------- helpers


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
    proc = subprocess.Popen(
        [*PANOSTAGE, "authority", "serve", "--port", "0", "--state-dir", str(home / "authority"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
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


# ---------------------------------------------------------------- rows


def bench_cold_start(runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(Path(tmp))
        timed([*PANOSTAGE, "--help"], env)  # warm the page cache, as a second invocation would be
        times = [timed([*PANOSTAGE, "--help"], env) for _ in range(runs)]
        baseline = [timed([sys.executable, "-c", "pass"], env) for _ in range(runs)]
    stats = summary(times)
    return [
        {
            "row": "cli cold start (panostage --help)",
            "value": f"{stats['median']:.0f} ms median, p99 {stats['p99']:.0f} ms",
            "goal": "<= 150 ms",
            "met": stats["median"] <= 150,
            "data": {**stats, "python_alone_ms": summary(baseline)},
        }
    ]


def bench_throughput(calls: int, threads: int) -> list[dict[str, Any]]:
    import boto3
    import psutil
    from botocore.config import Config

    from agent.aws.model import new_botocore_session

    with tempfile.TemporaryDirectory() as tmp, authority(Path(tmp)) as info:
        session = boto3.Session(
            botocore_session=new_botocore_session(),
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )
        config = Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=threads)
        per_thread = calls // threads
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                client = session.client("panorama", endpoint_url=info["endpoint_url"], config=config)
                client.list_devices(MaxResults=1)
                barrier.wait(timeout=60)
                for n in range(per_thread):
                    client.provision_device(Name=f"bench-{index}-{n}")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        server = psutil.Process(info["pid"])
        barrier.wait(timeout=60)
        start, cpu0 = time.perf_counter(), server.cpu_times()
        for worker in workers:
            worker.join()
        elapsed, cpu1 = time.perf_counter() - start, server.cpu_times()
        if errors:
            raise RuntimeError(f"throughput run failed: {errors[0]!r}")
    total = per_thread * threads
    rate = total / elapsed
    server_ms = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1000 / total
    return [
        {
            "row": f"authority ProvisionDevice/s ({threads} client threads)",
            "value": f"{rate:.0f}/s",
            "goal": ">= 200/s",
            "met": rate >= 200,
            "data": {
                "calls": total,
                "seconds": round(elapsed, 3),
                "per_second": round(rate, 1),
                "server_cpu_ms_per_call": round(server_ms, 3),
            },
        }
    ]


RECIPE = (
    "aws panorama provision-device --name {name} --endpoint-url {url} --query Certificates --output text"
    " | base64 --decode > {tmp}/{name}.zip"
    " && mcopy -o -i {image} {tmp}/{name}.zip ::/certificates-omni_{name}.zip && sync; rm -f {tmp}/{name}.zip"
)


def bench_stage(runs: int) -> list[dict[str, Any]]:
    from agent.aws.backend import open_backend
    from agent.clock import SystemClock
    from agent.config import load
    from agent.staging.factory import make_stager
    from agent.stick import open_target

    aws = Path(sys.executable).with_name("aws")
    if not aws.exists() or not shutil.which("mcopy") or not shutil.which("mkfs.fat"):
        return [
            {
                "row": "stage vs aws-cli recipe",
                "value": "skipped",
                "goal": "<= 1/5 of the recipe",
                "met": None,
                "data": {"reason": "needs awscli in the venv, mtools and dosfstools"},
            }
        ]
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
        settings = load(
            env={
                "PANOSTAGE_BACKEND_ENDPOINT_URL": url,
                "PANOSTAGE_BACKEND_REGION": REGION,
                "PANOSTAGE_PATHS_STATE_DIR": str(tmp / "state-warm"),
                "HOME": tmp_name,
                "PANOSTAGE_SYSTEM_CONFIG": str(tmp / "none.toml"),
            }
        ).settings
        backend = open_backend(settings)
        stager = make_stager(settings, backend, SystemClock(), replace=True)
        results: dict[str, list[float]] = {"recipe": [], "cold": [], "warm": []}
        steps: list[dict[str, float]] = []

        def warm(name: str) -> float:
            start = time.perf_counter()
            with open_target(str(images["warm"])) as target:
                result = stager.stage({"Name": name}, target)
            steps.append(result.durations_ms)
            return (time.perf_counter() - start) * 1000

        warm("warmup-0")  # first call pays client creation, as the daemon's first stick does
        timed([RECIPE.format(name="warmup-r", url=url, tmp=scratch, image=images["recipe"])], env, shell=True)
        for n in range(runs):  # interleaved A/B/C so drift hits all three alike
            results["recipe"].append(
                timed([RECIPE.format(name=f"r-{n}", url=url, tmp=scratch, image=images["recipe"])], env, shell=True)
            )
            results["cold"].append(
                timed([*PANOSTAGE, "stage", "--name", f"c-{n}", "--to", str(images["cold"]), "--replace", "-q"], env)
            )
            results["warm"].append(warm(f"w-{n}"))
        backend.close()
    stats = {k: summary(v) for k, v in results.items()}
    recipe = stats["recipe"]["median"]
    # what the agent itself adds: the whole warm hand-off minus the service call and the stick's own I/O
    overhead = [
        total - sum(s.get(k, 0.0) for k in ("provision", "write", "read_back"))
        for total, s in zip(results["warm"], steps[1:])
    ]
    step_medians = {k: round(statistics.median(s.get(k, 0.0) for s in steps[1:]), 2) for k in steps[-1]}
    rows = []
    for kind, label in (("warm", "stage, warm process (daemon path)"), ("cold", "stage, cold CLI process")):
        ratio = stats[kind]["median"] / recipe
        rows.append(
            {
                "row": f"{label} vs aws-cli recipe",
                "value": f"{stats[kind]['median']:.0f} ms (p99 {stats[kind]['p99']:.0f}) vs {recipe:.0f} ms "
                f"(p99 {stats['recipe']['p99']:.0f}) = {ratio:.2f}x",
                "goal": "<= 0.20x",
                "met": ratio <= 0.2,
                "data": {
                    "panostage": stats[kind],
                    "recipe": stats["recipe"],
                    "ratio": round(ratio, 3),
                    **({"steps_median_ms": step_medians} if kind == "warm" else {}),
                },
            }
        )
    over = summary(overhead)
    rows.append(
        {
            "row": "agent overhead per stage (warm; minus service call and stick I/O)",
            "value": f"{over['median']:.1f} ms median, p99 {over['p99']:.1f} ms",
            "goal": "<= 50 ms p99",
            "met": over["p99"] <= 50,
            "data": over,
        }
    )
    return rows


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
        sock = __import__("socket").socket(1, 2)  # AF_UNIX, SOCK_DGRAM: systemd's side of sd_notify
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
        from agent.state import StateDB

        state = StateDB(self.tmp / "state")
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(devs):
            for stick in state.sticks():
                if stick["devnode"] in devs and stick["state"] == "ready" and stick["devnode"] not in seen:
                    seen[stick["devnode"]] = time.perf_counter()
                elif stick["devnode"] in devs and stick["state"] in ("failed", "rejected", "idle", "left"):
                    raise RuntimeError(f"{stick['devnode']}: {stick['state']}: {stick['reason']}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in {timeout}s: {devs - set(seen)}")
            time.sleep(0.005)
        state.close()
        return seen


def bench_daemon(runs: int, idle_seconds: float) -> list[dict[str, Any]]:
    """udev event -> ready (one stick, and eight at once), and the idle daemon's footprint."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("udevadm"):
        return [
            {"row": "daemon rows", "value": "skipped", "goal": "-", "met": None, "data": {"reason": "needs root, udev"}}
        ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name, udevd_running():
        tmp = Path(tmp_name)
        rig = DaemonRig(tmp)
        rig.cli("plan", "import", str(_bench_plan(tmp, runs + 8 + 1)))
        images = [rig.image(f"s{n}") for n in range(runs)]
        fresh = [rig.image(f"e{n}") for n in range(8)]
        pid = rig.start()
        try:
            single = rig.one_at_a_time(images)
            steps = _step_medians(rig)
            eight = rig.all_at_once(fresh)
            for entry in rig.cli("plan", "list"):  # nothing left to follow up: the daemon is idle, but warm
                rig.cli("plan", "remove", str(entry["id"]))
            idle = _idle_footprint(pid, idle_seconds)
        finally:
            rig.stop()
        idle_remote = _idle_with_remote_authority(tmp / "remote", min(idle_seconds, 10.0))
        network = _eight_behind_network(tmp / "network", runs, SERVICE_ROUND_TRIP_MS)
    stats = summary(single)
    steps = {"udev_and_dispatch": round(stats["median"] - sum(steps.values()), 2), **steps}
    rows.append(
        {
            "row": "udev event -> stick ready (one stick)",
            "value": f"{stats['median']:.0f} ms median, p99 {stats['p99']:.0f} ms",
            "goal": "(reported)",
            "met": None,
            "data": {**stats, "steps_median_ms": steps},
        }
    )
    ratio = eight / stats["median"]
    rows.append(
        {
            "row": "eight sticks at once, all ready",
            "value": f"{eight:.0f} ms = {ratio:.2f}x one stick",
            "goal": "<= 2x one stick",
            "met": ratio <= 2.0,
            "data": {"all_ready_ms": round(eight, 1), "ratio": round(ratio, 3)},
        }
    )
    net_ratio = network["eight_ms"] / network["single"]["median"]
    rows.append(
        {
            "row": f"  same, service {SERVICE_ROUND_TRIP_MS} ms away (own process, +{SERVICE_ROUND_TRIP_MS} ms/call)",
            "value": f"{network['eight_ms']:.0f} ms = {net_ratio:.2f}x one stick ({network['single']['median']:.0f} ms)",
            "goal": "<= 2x one stick",
            "met": net_ratio <= 2.0,
            "data": {**network, "ratio": round(net_ratio, 3)},
        }
    )
    rows.append(
        {
            "row": f"idle daemon RSS / wake-ups over {idle_seconds:g} s",
            "value": f"{idle['rss_mib']:.1f} MiB, {idle['wakeups']} wake-ups",
            "goal": "<= 60 MiB, 0 periodic",
            "met": idle["rss_mib"] <= 60 and idle["wakeups"] <= 2,
            "data": idle,
        }
    )
    rows.append(
        {
            "row": "  same, authority in its own process (--endpoint-url)",
            "value": f"{idle_remote['rss_mib']:.1f} MiB, {idle_remote['wakeups']} wake-ups",
            "goal": "<= 60 MiB, 0 periodic",
            "met": idle_remote["rss_mib"] <= 60 and idle_remote["wakeups"] <= 2,
            "data": idle_remote,
        }
    )
    return rows


#: The added answer time per call for the "service far away" row: a regional API round trip.
SERVICE_ROUND_TRIP_MS = 100


def _eight_behind_network(tmp: Path, runs: int, latency_ms: int) -> dict[str, Any]:
    """One stick, then eight at once, against an authority in its own process that answers each
    call ``latency_ms`` late: what the daemon's concurrency is for (a service on the network)."""
    tmp.mkdir()
    with authority(tmp) as info:
        rig = DaemonRig(tmp)
        rig.env.update(
            PANOSTAGE_BACKEND_ENDPOINT_URL=info["endpoint_url"],
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
        )
        for operation in ("ProvisionDevice", "ListDevices", "DescribeDevice", "DeleteDevice"):
            rig.cli("authority", "fault", "set", operation, f"latency_ms={latency_ms}")
        rig.cli("plan", "import", str(_bench_plan(tmp, runs + 8 + 1)))
        images = [rig.image(f"n{n}") for n in range(runs)]
        fresh = [rig.image(f"m{n}") for n in range(8)]
        rig.start()
        try:
            single = rig.one_at_a_time(images)
            eight = rig.all_at_once(fresh)
        finally:
            rig.stop()
    return {"latency_ms": latency_ms, "single": summary(single), "eight_ms": round(eight, 1)}


def _idle_with_remote_authority(tmp: Path, seconds: float) -> dict[str, Any]:
    """The daemon's own footprint: the local authority (a stand-in for the service) in another process."""
    tmp.mkdir()
    with authority(tmp) as info:
        rig = DaemonRig(tmp)
        rig.env.update(
            PANOSTAGE_BACKEND_ENDPOINT_URL=info["endpoint_url"],
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
        )
        rig.cli("plan", "add", "--name", "remote-0")
        image = rig.image("remote")
        pid = rig.start()
        try:
            dev = rig.attach(image)
            rig.ready_at({dev})
            rig.detach(dev)
            rig.cli("plan", "remove", "remote-0")
            return _idle_footprint(pid, seconds)
        finally:
            rig.stop()


def _bench_plan(tmp: Path, count: int) -> Path:
    path = tmp / "plan.csv"
    path.write_text("name\n" + "".join(f"bench-{n:03d}\n" for n in range(count)))
    return path


def _step_medians(rig: DaemonRig) -> dict[str, float]:
    records = [r for r in rig.cli("log", "show") if r["kind"] == "handoff" and r.get("outcome") == "ready"][1:]
    keys = records[-1]["durations_ms"].keys() if records else []
    return {k: round(statistics.median(r["durations_ms"].get(k, 0.0) for r in records), 2) for k in keys}


def _idle_footprint(pid: int, seconds: float) -> dict[str, Any]:
    """RSS, and context switches of every thread over ``seconds`` with nothing happening."""
    import psutil

    proc = psutil.Process(pid)
    time.sleep(1.0)  # let the last stick's aftermath settle; this is a measurement window, not synchronisation

    def switches() -> int:
        return sum(t.voluntary + t.involuntary for t in (psutil.Process(pid).num_ctx_switches(),))

    before = switches()
    time.sleep(seconds)
    after = switches()
    return {
        "rss_mib": round(proc.memory_info().rss / (1 << 20), 1),
        "wakeups": after - before,
        "threads": proc.num_threads(),
        "window_seconds": seconds,
    }


def _stations_rows(runs: int) -> list[dict[str, Any]]:
    from bench_stations import bench_stations  # a module of its own: two stations on one authority

    return bench_stations(runs)


def _trust_rows(runs: int) -> list[dict[str, Any]]:
    from bench_trust import bench_trust  # a module of its own: the stick-trust rows

    return bench_trust(runs)


def _soak_rows(count: int) -> list[dict[str, Any]]:
    from bench_soak import bench_soak  # a module of its own: the long run

    return bench_soak(count)


def _idle_followup_rows(runs: int, seconds: float) -> list[dict[str, Any]]:
    from bench_soak import bench_idle_followup  # the idle daemon with follow-up work

    return bench_idle_followup(runs, seconds)


ROWS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "cold_start": lambda a: bench_cold_start(a.runs),
    "throughput": lambda a: bench_throughput(a.calls, a.threads),
    "stage": lambda a: bench_stage(a.runs),
    "daemon": lambda a: bench_daemon(a.runs, a.idle_seconds),
    "trust": lambda a: _trust_rows(a.runs),
    "stations": lambda a: _stations_rows(a.runs),
    "soak": lambda a: _soak_rows(a.soak),
    "idle_followup": lambda a: _idle_followup_rows(a.runs, max(a.idle_seconds, 60.0)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description="panostage benchmark")
    parser.add_argument("--runs", type=int, default=15, help="repetitions per timed row")
    parser.add_argument("--calls", type=int, default=2000, help="ProvisionDevice calls for the throughput row")
    parser.add_argument("--threads", type=int, default=4, help="client threads for the throughput row")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="window for the idle daemon's wake-ups")
    parser.add_argument("--soak", type=int, default=300, help="hand-offs for the soak row")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run, of {', '.join(ROWS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.only.split(","):
        rows += ROWS[name.strip()](args)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    width = max(len(r["row"]) for r in rows)
    vwidth = max(len(r["value"]) for r in rows)
    print(f"{'measure':<{width}}  {'result':<{vwidth}}  {'goal':<20}  met")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['row']:<{width}}  {r['value']:<{vwidth}}  {r['goal']:<20}  {met}")
    for r in rows:
        if "steps_median_ms" in r.get("data", {}):
            print(
                f"{r['row']}, steps (median ms): "
                + ", ".join(f"{k} {v}" for k, v in r["data"]["steps_median_ms"].items())
            )
    print(
        f"machine: {machine['cpus']} cpus, python {machine['python']}, kernel {machine['kernel']}, "
        f"load {machine['load_average_1m']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
