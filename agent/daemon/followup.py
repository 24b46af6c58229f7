"""After the stick: notice when staged devices come ONLINE, then run their post-provision actions.

A plan entry may ask for an OTA update and/or a reboot once its device is online
(`plan add --ota V --reboot`).  This runs only while staged or provisioned entries exist,
so an idle daemon does not wake for it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agent.aws.errors import error_code

log = logging.getLogger("panostage.followup")


class FollowUp:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def pending(self) -> bool:
        counts = self.ctx.state.plan_counts()
        return counts["staged"] + counts["provisioned"] > 0

    def run_once(self) -> None:
        """One pass over staged and provisioned entries; contained per entry."""
        for entry in self.ctx.state.plan("staged"):
            self._guard(self._check_online, entry)
        for entry in self.ctx.state.plan("provisioned"):
            self._guard(self._advance_actions, entry)

    def _guard(self, step: Any, entry: dict[str, Any]) -> None:
        try:
            step(entry)
        except Exception as exc:  # noqa: BLE001 - one entry's trouble never stops the others
            log.warning("follow-up of %s: %s", entry["name"], exc)

    def _describe(self, device_id: str | None) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        if not device_id:
            return None
        try:
            return self.ctx.backend.panorama().describe_device(DeviceId=device_id)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise

    def _check_online(self, entry: dict[str, Any]) -> None:
        device = self._describe(entry.get("device_id"))
        status = (device or {}).get("ProvisioningStatus")
        if status == "SUCCEEDED":
            log.info("%s is provisioned (%s)", entry["name"], device.get("DeviceConnectionStatus"))
            self.ctx.state.set_entry(entry["id"], status="provisioned")
        elif status in ("FAILED", "ERROR") or device is None:
            why = f"the device is {status}" if device else "the device no longer exists"
            self.ctx.state.requeue(entry["id"], f"{why}; staging it again",
                                   max_attempts=self.ctx.settings.daemon.max_attempts)

    def _advance_actions(self, entry: dict[str, Any]) -> None:
        actions = dict(entry.get("actions") or {})
        progress = dict(actions.get("progress") or {})
        client = self.ctx.backend.panorama()
        for kind in ("ota", "reboot"):
            if not actions.get(kind) or progress.get(kind) == "COMPLETED":
                continue
            job_id = progress.get(f"{kind}_job")
            if job_id is None:
                request: dict[str, Any] = {"DeviceIds": [entry["device_id"]], "JobType": kind.upper()}
                if kind == "ota":
                    request["DeviceJobConfig"] = {"OTAJobConfig": {
                        "ImageVersion": actions["ota"]["image_version"],
                        "AllowMajorVersionUpdate": bool(actions["ota"].get("allow_major"))}}
                progress[f"{kind}_job"] = client.create_job_for_devices(**request)["Jobs"][0]["JobId"]
                log.info("%s: %s job %s started", entry["name"], kind, progress[f"{kind}_job"])
                self._save(entry, actions, progress)
                return  # one step at a time: the job runs before the next is started
            status = client.describe_device_job(JobId=job_id).get("Status")
            if status == "FAILED":
                progress[kind] = "FAILED"
                self._save(entry, actions, progress, status="attention", last_error=f"{kind} job {job_id} failed")
                return
            if status != "COMPLETED":
                return
            progress[kind] = "COMPLETED"
            self._save(entry, actions, progress)
        log.info("%s: done", entry["name"])
        self._save(entry, actions, progress, status="done")

    def _save(self, entry: dict[str, Any], actions: dict[str, Any], progress: dict[str, Any], **fields: Any) -> None:
        actions["progress"] = progress
        self.ctx.state.set_entry(entry["id"], actions=json.dumps(actions), **fields)
