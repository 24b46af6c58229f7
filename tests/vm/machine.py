"""One staging laptop under QEMU: systemd as PID 1, USB sticks plugged and pulled through QMP, commands run
through the QEMU guest agent (QGA, over virtio-serial).

QMP and QGA are both spoken with ``qemu.qmp``, QEMU's own client library.  Every wait is on a condition
with a deadline: the guest agent answering, ``systemctl is-system-running --wait``, a QMP event, a command
exiting, a file's content.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from tests.helpers import wait_until
from tests.vm.image import BootFiles

#: Guest RAM: systemd, udev, the daemon and its authority child fit in a third of it.
MEMORY_MIB = 1536
BOOT_DEADLINE = 240.0  # TCG on a busy 2-core machine: ~25 s measured, x10 of slack
CMDLINE = "root=LABEL=pano-root rw console=ttyS0 usb_storage.delay_use=0 panic=-1 systemd.show_status=auto"
KVM_PROBE_SECONDS = 20.0  # a working KVM reaches the panic in ~2 s
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class GuestCommandFailed(AssertionError):
    pass


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Machine:
    """A running guest.  ``boot()`` makes one; use it as a context manager so QEMU always ends."""

    files: BootFiles
    tmp: Path
    accel: str
    proc: subprocess.Popen[bytes]
    qmp: QEMUMonitorProtocol
    qga: QEMUMonitorProtocol | None = None
    booted_in: float = 0.0
    sticks: dict[str, str] = field(default_factory=dict)  # QEMU device id -> block node name

    # ---------------------------------------------------------------- life

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        for client in (self.qga, self.qmp):
            with contextlib.suppress(Exception):
                if client is not None:
                    client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def console(self, tail: int = 60) -> str:
        """The end of the guest's serial console (kernel and systemd messages), for failure reports."""
        try:
            lines = (self.tmp / "console.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def wait_ready(self, deadline: float = BOOT_DEADLINE) -> float:
        """Until the guest agent answers and systemd says the boot is over; returns the seconds it took."""
        started = time.monotonic()
        self.qga = _wait_for_agent(self.tmp / "qga.sock", self.proc, started + deadline, self.console)
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=deadline).stdout.strip()
        if state not in ("running", "degraded"):
            raise AssertionError(f"the guest booted to {state!r}\n{self.console()}")
        self.booted_in = time.monotonic() - started
        return self.booted_in

    def power_off(self, timeout: float = 120) -> None:
        """A clean shutdown through the guest agent; waits for QEMU to exit."""
        assert self.qga is not None
        with contextlib.suppress(Exception):  # the agent dies with the guest: there may be no reply
            self.qga.settimeout(5)
            self.qga.cmd("guest-shutdown", mode="powerdown")
        self.proc.wait(timeout=timeout)

    def hard_reset(self) -> None:
        """Power cut and power on (QMP ``system_reset``): nothing in the guest gets to finish."""
        self.qmp.cmd("system_reset")
        if self.qga is not None:
            with contextlib.suppress(Exception):
                self.qga.close()
        self.qga = None

    # ---------------------------------------------------------------- sticks

    def plug(self, image: Path, *, serial: str, stick_id: str, sector_size: int = 512) -> None:
        """A USB mass-storage stick (``qemu-xhci`` + ``usb-storage``) backed by ``image``, plugged in now."""
        node = f"node-{stick_id}"
        self.qmp.cmd(
            "blockdev-add", driver="raw", **{"node-name": node}, file={"driver": "file", "filename": str(image)}
        )
        if sector_size == 512:
            self.qmp.cmd("device_add", driver="usb-storage", bus="xhci.0", drive=node, serial=serial, id=stick_id)
        else:  # usb-storage keeps 512-byte sectors: the same USB bulk-only device with a SCSI disk of our making
            self.qmp.cmd("device_add", driver="usb-bot", bus="xhci.0", serial=serial, id=stick_id)
            sizes = {"logical_block_size": sector_size, "physical_block_size": sector_size}
            self.qmp.cmd(
                "device_add", driver="scsi-hd", bus=f"{stick_id}.0", drive=node, id=f"{stick_id}-disk", **sizes
            )
            self.qmp.cmd("qom-set", path=stick_id, property="attached", value=True)  # hot-plugged: attach by hand
        self.sticks[stick_id] = node

    def pull(self, stick_id: str, timeout: float = 30) -> None:
        """Pull the stick: ``device_del``, wait for QEMU's DEVICE_DELETED for it, free its backing file."""
        node = self.sticks.pop(stick_id)
        self.qmp.cmd("device_del", id=stick_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"QEMU never reported {stick_id} deleted")
            try:
                event = self.qmp.pull_event(wait=left)
            except TimeoutError:
                continue
            if event and event["event"] == "DEVICE_DELETED" and event["data"].get("device") == stick_id:
                break
        self.qmp.cmd("blockdev-del", **{"node-name": node})

    # ---------------------------------------------------------------- guest commands

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run ``argv`` in the guest as root (guest-exec) and wait for it, with a deadline."""
        assert self.qga is not None, "the guest is not up"
        self.qga.settimeout(30)
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        args["env"] = [f"{k}={v}" for k, v in {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}.items()]
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        pid = self.qga.cmd("guest-exec", **args)["pid"]
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            status = self.qga.cmd("guest-exec-status", pid=pid)
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{list(argv)} still running after {timeout} s in the guest")
            time.sleep(pause)  # polling the agent for exit, within the deadline above
            pause = min(pause * 2, 0.25)
        result = Result(
            list(argv),
            status.get("exitcode", 128 + status.get("signal", 0)),
            base64.b64decode(status.get("out-data", "")).decode(errors="replace"),
            base64.b64decode(status.get("err-data", "")).decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise GuestCommandFailed(f"{list(argv)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, *, timeout: float = 120, check: bool = True) -> str:
        return self.run("/bin/sh", "-c", script, timeout=timeout, check=check).stdout

    def panostage(self, *args: str, user: str = "panostage", check: bool = True, timeout: float = 120) -> Result:
        """The operator's command in the guest, as the service's user on the service's state (README)."""
        argv = ["runuser", "-u", user, "--", "env", "PANOSTAGE_PATHS_STATE_DIR=/var/lib/panostage", "panostage", *args]
        return self.run(*argv, check=check, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.panostage("status", "--json").stdout)

    def wait_stick(self, identity: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        """The daemon's view of the stick with ``identity`` once it is in one of ``states``."""

        def seen() -> dict[str, Any] | None:
            for stick in self.status()["sticks"]:
                if stick.get("identity") == identity and stick["state"] in states:
                    return stick
            return None

        try:
            return self.wait_for(f"{identity} to be {'/'.join(states)}", seen, timeout=timeout, interval=0.3)
        except AssertionError as failure:
            journal = self.sh("journalctl -b -u panostage --no-pager -n 40 -o cat", check=False)
            raise AssertionError(f"{failure}\n--- status ---\n{self.status()}\n--- journal ---\n{journal}") from None

    def handoffs(self) -> list[dict[str, Any]]:
        return [r for r in json.loads(self.panostage("log", "show", "--json").stdout) if r["kind"] == "handoff"]

    def read_file(self, path: str) -> bytes:
        """A guest file's bytes through the agent (no process started in the guest)."""
        assert self.qga is not None
        handle = self.qga.cmd("guest-file-open", path=path, mode="r")
        chunks = []
        try:
            while True:
                part = self.qga.cmd("guest-file-read", handle=handle, count=1 << 20)
                chunks.append(base64.b64decode(part["buf-b64"]))
                if part["eof"]:
                    break
        finally:
            self.qga.cmd("guest-file-close", handle=handle)
        return b"".join(chunks)

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float = 120, interval: float = 0.5) -> Any:
        """Poll ``condition`` (guest reads) until truthy; fail with the console's end after ``timeout``."""
        try:
            return wait_until(condition, timeout=timeout, interval=interval, what=what)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{self.console(30)}") from None


def _wait_for_agent(
    sock: Path, proc: subprocess.Popen[bytes], deadline: float, console: Callable[[], str]
) -> QEMUMonitorProtocol:
    """The guest agent answering ``guest-ping`` (it starts when systemd sees its virtio port)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"QEMU exited ({proc.returncode}) during boot\n{console()}")
        agent = QEMUMonitorProtocol(str(sock))
        try:
            agent.connect(negotiate=False)
            agent.settimeout(2)
            agent.cmd("guest-ping")
            return agent
        except (TimeoutError, OSError, QMPError):  # not up yet
            with contextlib.suppress(Exception):
                agent.close()
    raise AssertionError(f"the guest agent never answered\n{console()}")


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"QEMU made no {path.name} (exit {proc.poll()})")
        time.sleep(0.02)


def choose_accel(files: BootFiles, cache: Path) -> str:
    """KVM when it boots Debian's kernel here, else TCG; ``PANOSTAGE_VM_ACCEL`` decides outright.

    The probe boots the kernel to its first user-space step (``rdinit=`` names nothing, so it panics and,
    with ``panic=-1 -no-reboot``, QEMU exits): seconds under a working KVM; a KVM that cannot run stock
    guest kernels hangs (FACTS.md), and the deadline below falls back to TCG.  The answer is kept per host
    kernel, QEMU and guest kernel.
    """
    chosen = os.environ.get("PANOSTAGE_VM_ACCEL")
    if chosen:
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(f"{os.uname().release}|{qemu}|{files.kernel.stat().st_size}".encode()).hexdigest()[:16]
    answer = cache / f"accel-{key}"
    if answer.exists():
        return answer.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="panostage-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", f"file:{console}", "-kernel", str(files.kernel), "-initrd", str(files.initrd),
                "-append", "console=ttyS0 panic=-1 rdinit=/panostage-kvm-probe"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=KVM_PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        works = proc.returncode == 0 and "Kernel panic" in console.read_text(errors="replace")
    accel = "kvm" if works else "tcg"
    cache.mkdir(parents=True, exist_ok=True)
    answer.write_text(accel + "\n")
    return accel


def qemu_argv(files: BootFiles, tmp: Path, accel: str, *, snapshot: bool, extra_disk: Path | None) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-accel", accel,
        "-machine", "q35",
        "-smp", "2",
        "-m", str(MEMORY_MIB),
        "-nodefaults", "-display", "none", "-no-user-config",
        "-serial", f"file:{tmp / 'console.log'}",
        "-kernel", str(files.kernel), "-initrd", str(files.initrd), "-append", CMDLINE,
        "-drive", f"file={files.disk},if=virtio,format=raw,snapshot={'on' if snapshot else 'off'}",
        "-device", "qemu-xhci,id=xhci",
        "-device", "virtio-serial",
        "-chardev", f"socket,path={tmp / 'qga.sock'},server=on,wait=off,id=qga0",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-qmp", f"unix:{tmp / 'qmp.sock'},server=on,wait=off",
        "-nic", "none",
        "-rtc", "base=utc",
    ]  # fmt: skip
    if extra_disk is not None:
        argv += ["-drive", f"file={extra_disk},if=virtio,format=raw,readonly=on"]
    return argv


@contextlib.contextmanager
def boot(
    files: BootFiles, extra_disk: Path | None = None, *, snapshot: bool = False, accel: str = "tcg"
) -> Iterator[Machine]:
    """Start QEMU on ``files`` and wait until the guest is up.  ``snapshot``: writes are discarded at exit."""
    with tempfile.TemporaryDirectory(prefix="panostage-vm-") as tmp_name:
        tmp = Path(tmp_name)
        argv = qemu_argv(files, tmp, accel, snapshot=snapshot, extra_disk=extra_disk)
        log = open(tmp / "qemu.log", "wb")  # noqa: SIM115 - QEMU's own stderr, closed with the machine
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(tmp))
        )
        machine = None
        try:
            _wait_for_socket(tmp / "qmp.sock", proc)
            qmp = QEMUMonitorProtocol(str(tmp / "qmp.sock"))
            qmp.connect()
            qmp.settimeout(30)
            machine = Machine(files, tmp, accel, proc, qmp)
            machine.wait_ready()
            yield machine
        except BaseException:
            log.flush()
            qemu_out = (tmp / "qemu.log").read_text(errors="replace")[-2000:]
            if qemu_out.strip():
                print(f"tests/vm: QEMU said: {qemu_out}")
            raise
        finally:
            if machine is not None:
                machine.kill()
            elif proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
