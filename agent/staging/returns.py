"""The return trip: a stick comes back from the appliance.

:func:`collect` copies the appliance's logs - regular files named ``*.log`` directly in
``/panorama``, each at most :data:`MAX_LOG_BYTES` - into the hand-off's folder in the state
directory (0700, files 0600), asks the service how the device fared, and logs the outcome
(provisioned / failed / never used).  Every byte it would keep is scanned for private key
material first (:mod:`agent.archive.keyscan`); such a file is not kept, and the record names
it as refused.  :func:`wipe` removes only what panostage owns - archives, its temporaries and
the appliance's logs - overwriting files first (an archive held a private key); every other
file on the stick stays as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent import paths
from agent.archive import Limits, device_name_from_file_name
from agent.archive.keyscan import key_material
from agent.clock import Clock
from agent.handoff_log import HandoffLog
from agent.stick import LOG_DIR, archives, leftovers, names
from agent.stick.checks import archive_report
from agent.stick.model import Entry, StickTarget

if TYPE_CHECKING:
    from agent.aws.backend import ServiceBackend

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
#: The largest appliance log collected (a larger one is left on the stick and named in the record).
MAX_LOG_BYTES = 16 * 1024 * 1024
#: At most this many logs are collected from one stick.
MAX_LOGS = 64


@dataclass
class Collected:
    outcome: str  # "provisioned" | "failed" | "never-used" | "pending" | "unknown-device"
    device: dict[str, Any]
    provisioning_status: str | None
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder: str | None = None
    #: Files in /panorama that were not kept: (name, why) - key material, too large, not a log.
    refused: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "device": self.device,
            "provisioning_status": self.provisioning_status,
            "logs": self.logs,
            "folder": self.folder,
            "refused": self.refused,
        }


def stick_device(target: StickTarget, clock: Clock, limits: Limits = Limits()) -> dict[str, Any]:
    """Which device the stick was staged for: from its archive's manifest or file name."""
    found = [e for e in archives(target) if e.kind == "file"]
    if not found:
        return {}
    entry = found[0]
    device: dict[str, Any] = {"name": device_name_from_file_name(entry.name), "archive": entry.name}
    report = archive_report(target, entry, now=clock.now(), limits=limits)
    if report.sha256 is None:  # too large to be an archive: judged unread
        device["archive_outcome"] = report.outcome.value
        return device
    manifest = report.manifest or {}
    device["id"] = manifest.get("device_id")
    device["name"] = manifest.get("device_name") or device["name"]
    if report.device_certificate:
        device["certificate_serial"] = report.device_certificate.serial
        device["archive_outcome"] = report.outcome.value
    return device


def _judge(status: str | None, has_logs: bool) -> str:
    if status is None:
        return "unknown-device"
    if status == "SUCCEEDED":
        return "provisioned"
    if status in ("FAILED", "ERROR"):
        return "failed"
    if status in ("AWAITING_PROVISIONING", "PENDING"):
        return "failed" if has_logs else "never-used"
    return status.lower()


def collect(
    target: StickTarget,
    backend: ServiceBackend,
    log: HandoffLog,
    clock: Clock,
    state_dir: Path,
    station: str,
    operator: str,
    limits: Limits = Limits(),
) -> Collected:
    """Copy the appliance's logs off the stick (key material refused), check the device, record the outcome."""
    target.check_sound()
    device = stick_device(target, clock, limits)
    status = _status(backend, device)
    result = Collected(outcome="pending", device=device, provisioning_status=status)
    folder = (
        state_dir
        / "handoffs"
        / SAFE_NAME.sub("_", device.get("name") or "unknown")
        / clock.now().strftime("%Y%m%dT%H%M%SZ")
    )
    found_logs = _appliance_logs(target)
    for entry, why in found_logs:
        if why is None:
            data = target.read(f"{LOG_DIR}/{entry.name}", bypass_cache=False, limit=MAX_LOG_BYTES)
            found = key_material(data, limits)
            why = f"it holds {found}: not kept" if found else None
        if why is not None:
            result.refused.append({"name": entry.name, "reason": why})
            continue
        _keep(folder, entry.name, data)
        result.logs[entry.name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        result.folder = str(folder)
    result.outcome = _judge(status, any(is_log(entry) for entry, _ in found_logs))  # the appliance wrote logs
    log.append(
        "collect",
        time=clock.now(),
        station=station,
        operator=operator,
        outcome=result.outcome,
        device={k: v for k, v in device.items() if k in ("name", "id", "certificate_serial")},
        stick=target.describe(),
        provisioning_status=status,
        logs=result.logs,
        folder=result.folder,
        refused=result.refused,
    )
    return result


def _appliance_logs(target: StickTarget) -> list[tuple[Entry, str | None]]:
    """The files of /panorama, each with why it is not collected (None: collect it)."""
    entry = target.lookup(LOG_DIR)
    if entry is None or entry.kind != "dir":
        return []
    out: list[tuple[Entry, str | None]] = []
    kept = 0
    for item in target.list_dir(LOG_DIR):
        if item.kind != "file":
            out.append((item, f"a {item.kind}, not a log file: left on the stick"))
        elif not is_log(item):
            out.append((item, "not an appliance log (*.log): left on the stick"))
        elif item.size > MAX_LOG_BYTES:
            out.append((item, f"{item.size} bytes, more than the {MAX_LOG_BYTES} collected: left on the stick"))
        elif kept >= MAX_LOGS:
            out.append((item, f"more than {MAX_LOGS} logs: left on the stick"))
        else:
            kept += 1
            out.append((item, None))
    return out


def is_log(entry: Entry) -> bool:
    """A regular file named ``*.log`` (as FAT compares names): what the appliance writes to /panorama."""
    return entry.kind == "file" and names.fold(entry.name).endswith(".log")


def _keep(folder: Path, name: str, data: bytes) -> None:
    """Write one log into the hand-off's folder: a new file, 0600, flushed (never through a symlink)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SAFE_NAME.sub("_", name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        paths.write_all(fd, data)
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)


def _status(backend: ServiceBackend, device: dict[str, Any]) -> str | None:
    from agent.aws.provisioning import describe_or_none, devices_named

    client = backend.panorama()
    if device.get("id"):
        return (describe_or_none(client, device["id"]) or {}).get("ProvisioningStatus")
    if device.get("name"):
        matches = devices_named(client, device["name"])
        if matches:
            newest = max(matches, key=lambda d: cast(datetime, d.get("CreatedTime")))  # the model: a timestamp
            device["id"] = newest["DeviceId"]
            return newest.get("ProvisioningStatus")
    return None


def wipe(
    target: StickTarget,
    log: HandoffLog,
    clock: Clock,
    station: str,
    operator: str,
    *,
    reformat: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Remove what panostage owns - archives, its temporaries, the appliance's logs - or reformat keeping the label.

    Every other file stays as it was; /panorama itself goes only when nothing else is left in it.
    """
    removed: list[str] = []
    if reformat:
        info = target.fs_info()
        target.format(label if label is not None else info.label)
        removed.append("(reformatted)")
    else:
        target.check_sound()
        for entry in archives(target) + leftovers(target):
            if entry.kind == "file":
                target.wipe(entry.name)
            elif entry.kind == "dir" and target.list_dir(entry.name):
                continue  # a directory with files in it is never removed for you
            else:
                target.remove(entry.name)
            removed.append(entry.name)
        logs = target.lookup(LOG_DIR)
        if logs is not None and logs.kind == "dir":
            for entry in target.list_dir(LOG_DIR):
                if is_log(entry):
                    target.wipe(f"{LOG_DIR}/{entry.name}")
                    removed.append(f"{LOG_DIR}/{entry.name}")
            if not target.list_dir(LOG_DIR):
                target.remove(LOG_DIR)
    log.append(
        "wipe",
        time=clock.now(),
        station=station,
        operator=operator,
        outcome="wiped",
        stick=target.describe(),
        removed=removed,
    )
    return {"removed": removed, "stick": target.describe()}
