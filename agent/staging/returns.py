"""The return trip: a stick comes back from the appliance.

:func:`collect` copies ``/panorama/*.log`` into the hand-off's folder in the state
directory, asks the service how the device fared, and logs the outcome
(provisioned / failed / never used).  :func:`wipe` removes archives and logs from
the stick, overwriting the archive's clusters first (they held a private key).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.archive import device_name_from_file_name, verify_archive
from agent.clock import Clock
from agent.handoff_log import HandoffLog
from agent.stick import LOG_DIR, archives, leftovers

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class Collected:
    outcome: str  # "provisioned" | "failed" | "never-used" | "pending" | "unknown-device"
    device: dict[str, Any]
    provisioning_status: str | None
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "device": self.device, "provisioning_status": self.provisioning_status,
                "logs": self.logs, "folder": self.folder}


def stick_device(target: Any, clock: Clock) -> dict[str, Any]:
    """Which device the stick was staged for: from its archive's manifest or file name."""
    found = [e for e in archives(target) if e.kind == "file"]
    if not found:
        return {}
    entry = found[0]
    device: dict[str, Any] = {"name": device_name_from_file_name(entry.name), "archive": entry.name}
    report = verify_archive(target.read(entry.name), now=clock.now(), margin_seconds=0)
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


def collect(target: Any, backend: Any, log: HandoffLog, clock: Clock, state_dir: Path,
            station: str, operator: str) -> Collected:
    """Copy the appliance's logs off the stick, check the device, record the outcome."""
    device = stick_device(target, clock)
    logs = {e.name: target.read(f"{LOG_DIR}/{e.name}") for e in target.list_dir(LOG_DIR) if e.kind == "file"} \
        if target.lookup(LOG_DIR) else {}
    status = _status(backend, device)
    result = Collected(outcome=_judge(status, bool(logs)), device=device, provisioning_status=status)
    if logs:
        stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
        folder = state_dir / "handoffs" / SAFE_NAME.sub("_", device.get("name") or "unknown") / stamp
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, data in logs.items():
            (folder / SAFE_NAME.sub("_", name)).write_bytes(data)
            result.logs[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        result.folder = str(folder)
    log.append("collect", time=clock.now(), station=station, operator=operator, outcome=result.outcome,
               device={k: v for k, v in device.items() if k in ("name", "id", "certificate_serial")},
               stick=target.describe(), provisioning_status=status, logs=result.logs, folder=result.folder)
    return result


def _status(backend: Any, device: dict[str, Any]) -> str | None:
    from botocore.exceptions import ClientError

    from agent.aws.errors import error_code
    from agent.aws.provisioning import devices_named

    client = backend.panorama()
    try:
        if device.get("id"):
            return client.describe_device(DeviceId=device["id"]).get("ProvisioningStatus")
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        return None
    if device.get("name"):
        matches = devices_named(client, device["name"])
        if matches:
            newest = max(matches, key=lambda d: d.get("CreatedTime"))
            device["id"] = newest["DeviceId"]
            return newest.get("ProvisioningStatus")
    return None


def wipe(target: Any, log: HandoffLog, clock: Clock, station: str, operator: str, *,
         reformat: bool = False, label: str | None = None) -> dict[str, Any]:
    """Remove archives, appliance logs and stale temporaries; or reformat keeping the label."""
    removed: list[str] = []
    if reformat:
        info = target.fs_info()
        target.format(label if label is not None else info.label)
        removed.append("(reformatted)")
    else:
        for entry in archives(target) + leftovers(target):
            if entry.kind == "file":
                target.wipe(entry.name)
            else:
                target.remove(entry.name)
            removed.append(entry.name)
        if target.lookup(LOG_DIR):
            for entry in target.list_dir(LOG_DIR):
                if entry.kind == "file":
                    target.wipe(f"{LOG_DIR}/{entry.name}")
                    removed.append(f"{LOG_DIR}/{entry.name}")
            if not target.list_dir(LOG_DIR):
                target.remove(LOG_DIR)
    log.append("wipe", time=clock.now(), station=station, operator=operator, outcome="wiped",
               stick=target.describe(), removed=removed)
    return {"removed": removed, "stick": target.describe()}
