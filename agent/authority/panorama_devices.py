"""Panorama's device operations: ProvisionDevice (a certificate and the archive that carries
it), DescribeDevice, ListDevices and DeleteDevice, with the device as AWS describes it."""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.authority import lifecycle as lc
from agent.authority.apierror import conflict, quota_exceeded
from agent.authority.bundle import ZIP_DEFECTS, ArchiveContent, build_archive
from agent.authority.ca import CertificateAuthority, new_key, private_key_pem, public_key_pem
from agent.authority.operation_base import OperationGroup, Params, RequestContext, Response
from agent.authority.paging import PANORAMA_PAGE, make_token, paginate, token_position, unissued_token, with_token
from agent.authority.store import Row, Store, dumps, random_id
from agent.aws.operations import PANORAMA

DEVICE_TYPE = "PANORAMA_APPLIANCE"
DEVICE_BRAND = "AWS_PANORAMA"

#: Aggregated statuses whose devices are never claimed, and the rows that can have each status (a necessary
#: condition: lifecycle.device_state decides) - so a filtered listing reads only those rows.
UNCLAIMED_STATUSES = frozenset({"AWAITING_PROVISIONING", "PENDING", "FAILED", "ERROR"})
STATUS_ROWS = {
    "AWAITING_PROVISIONING": "claim_status IS NULL AND deleted_at IS NULL",
    "PENDING": "claim_status IS NULL AND deleted_at IS NULL",
    "FAILED": "claim_status = 'FAILED' AND deleted_at IS NULL",
    "DELETING": "deleted_at IS NOT NULL",
    **dict.fromkeys(
        ("ONLINE", "OFFLINE", "REBOOTING", "UPDATE_NEEDED", "LEASE_EXPIRED"),
        "claim_status = 'SUCCEEDED' AND deleted_at IS NULL",
    ),
}


class PanoramaDeviceOperations(OperationGroup):
    """Panorama: devices."""

    SERVICE = PANORAMA
    OPERATIONS = ("ProvisionDevice", "DescribeDevice", "ListDevices", "DeleteDevice")

    def provision_device(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        now = self.clock.now()
        validity = timedelta(seconds=self.settings.cert_validity_seconds)
        device_id = random_id("device-")
        thing_name = f"panorama-{device_id[len('device-') :]}"
        key = new_key()
        ca = self.ca
        not_before, not_after = now, now + validity
        if defect == "expired_cert":
            not_before, not_after = now - 2 * validity - timedelta(seconds=1), now - validity - timedelta(seconds=1)
        elif defect == "wrong_ca":
            ca = _rogue_ca()
        issued = ca.issue(thing_name, key.public_key(), not_before, not_after)
        name = p["Name"]

        def check(conn: sqlite3.Connection) -> None:
            if self.settings.unique_names:
                taken = Store.live_name_taken(conn, name)
                if taken:
                    raise conflict("device", taken, f"a device named {name!r} already exists: {taken}")
            quota = self.settings.device_quota
            if quota > 0 and Store.live_device_count(conn) >= quota:
                raise quota_exceeded(f"this authority holds at most {quota} devices; delete one first")

        network = p.get("NetworkingConfiguration")
        self.store.insert_device(
            {
                "device_id": device_id,
                "name": name,
                "description": p.get("Description"),
                "tags": dumps(p.get("Tags") or {}),
                "network": None if network is None else dumps(network),
                "region": ctx.region,
                "thing_name": thing_name,
                "created": now.timestamp(),
                "cert_serial": issued.serial_hex,
                "cert_fingerprint": issued.fingerprint,
                "cert_not_after": issued.not_after.timestamp(),
                "public_key": public_key_pem(key.public_key()),  # the certificate's
            },
            check,
        )
        archive_key = new_key() if defect == "key_mismatch" else key
        archive = build_archive(
            ArchiveContent(
                device_id=device_id,
                device_name=name,
                thing_name=thing_name,
                cert_pem=issued.pem,
                key_pem=private_key_pem(archive_key),
                ca_pem=self.ca.cert_pem,
                network=network or {},
                created=now,
                not_after=issued.not_after,
            ),
            defect if defect in ZIP_DEFECTS else None,
        )
        return {
            "Arn": self.arn(PANORAMA, ctx.region, f"device/{device_id}"),
            "Status": "AWAITING_PROVISIONING",
            "Certificates": archive,
            "DeviceId": device_id,
            "IotThingName": thing_name,
        }

    def _device_view(self, row: Row, jobs: Sequence[Row], state: lc.DeviceState, *, full: bool) -> Response:
        now = self.clock.timestamp()
        view: Response = {
            "Brand": DEVICE_BRAND,
            "CreatedTime": lc.to_datetime(row["created"]),
            "DeviceAggregatedStatus": state.aggregated,
            "DeviceId": row["device_id"],
            "LastUpdatedTime": lc.to_datetime(state.last_updated),
            "Name": row["name"],
            "ProvisioningStatus": state.provisioning,
            "Tags": json.loads(row["tags"]),
            "Type": DEVICE_TYPE,
        }
        if row["description"] is not None:
            view["Description"] = row["description"]
        claimed = row["claim_status"] == "SUCCEEDED"
        if claimed:
            current = lc.current_software(jobs, now, self.step)
            view["CurrentSoftware"] = current
            view["LeaseExpirationTime"] = lc.to_datetime(row["claimed_at"] + lc.LEASE.total_seconds())
        if jobs:
            latest = jobs[-1]
            view["LatestDeviceJob"] = {
                "JobType": latest["job_type"],
                "Status": lc.job_phase(latest, now, self.step).state,
            }
            if latest["image_version"]:
                view["LatestDeviceJob"]["ImageVersion"] = latest["image_version"]
        if not full:
            return view
        view.pop("LastUpdatedTime")
        view["Arn"] = self.arn(PANORAMA, row["region"], f"device/{row['device_id']}")
        view["DeviceConnectionStatus"] = state.connection
        if row["network"] is not None:
            view["NetworkingConfiguration"] = json.loads(row["network"])
        if claimed:
            view["LatestSoftware"] = lc.latest_software(view["CurrentSoftware"])
            view["CurrentNetworkingStatus"] = _network_status(row)
            if row["serial_number"]:
                view["SerialNumber"] = row["serial_number"]
        return view

    def describe_device(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        row, jobs, state = self.live_device(p["DeviceId"])
        return self._device_view(row, jobs, state, full=True)

    def list_devices(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        now = self.clock.timestamp()
        name_prefix: str | None = p.get("NameFilter")
        status_filter: str | None = p.get("DeviceAggregatedStatusFilter")
        if (
            status_filter == "AWAITING_PROVISIONING"
            and (p.get("SortBy") or "CREATED_TIME") == "CREATED_TIME"
            and not name_prefix
        ):
            return self._awaiting_page(p, now)
        # what may have that status; the state decides
        where = STATUS_ROWS.get(status_filter or "", "1")
        rows = self.store.devices_named(name_prefix, where) if name_prefix else self.store.devices(where)
        jobs_by_device: dict[str, list[Row]] = {}
        if status_filter in UNCLAIMED_STATUSES:  # an unclaimed device's status does not depend on jobs
            pass
        elif name_prefix:  # a few devices by name: their own jobs, through the index
            jobs_by_device = {row["device_id"]: self.store.jobs_of(row["device_id"]) for row in rows}
        else:
            for job in self.store.all_jobs():
                jobs_by_device.setdefault(job["device_id"], []).append(job)
        items = []  # what sorting and filtering need; the full view is built for the page only
        for row in rows:
            if name_prefix and not row["name"].startswith(name_prefix):
                continue
            jobs = jobs_by_device.get(row["device_id"], [])
            state = lc.device_state(row, jobs, now, self.step)
            if state.gone or (status_filter and state.aggregated != status_filter):
                continue
            items.append(
                {
                    "DeviceId": row["device_id"],
                    "CreatedTime": row["created"],
                    "Name": row["name"],
                    "DeviceAggregatedStatus": state.aggregated,
                    "view": (row, jobs, state),
                }
            )
        sort_by = p.get("SortBy") or "CREATED_TIME"
        sort_key = {
            "DEVICE_ID": lambda d: [d["DeviceId"]],
            "CREATED_TIME": lambda d: [d["CreatedTime"], d["DeviceId"]],
            "NAME": lambda d: [d["Name"], d["DeviceId"]],
            "DEVICE_AGGREGATED_STATUS": lambda d: [d["DeviceAggregatedStatus"], d["DeviceId"]],
        }[sort_by]
        scope = ["ListDevices", sort_by, p.get("SortOrder") or "ASCENDING", name_prefix, status_filter]
        page, token = paginate(
            items,
            sort_key,
            scope,
            p.get("NextToken"),
            p.get("MaxResults") or PANORAMA_PAGE,
            descending=p.get("SortOrder") == "DESCENDING",
        )
        page = [self._device_view(*item["view"], full=False) for item in page]
        return with_token({"Devices": page}, "NextToken", token)

    def _awaiting_page(self, p: Params, now: float) -> Response:
        """The devices waiting to be claimed, by creation time: one page read from the store, not every device
        (the follow-up of a station with a thousand staged devices lists them all, every pass)."""
        descending = p.get("SortOrder") == "DESCENDING"
        scope = ["ListDevices", "CREATED_TIME", p.get("SortOrder") or "ASCENDING", None, "AWAITING_PROVISIONING"]
        limit = p.get("MaxResults") or PANORAMA_PAGE
        after = token_position(p.get("NextToken"), scope)
        if after is not None and not (
            isinstance(after, list)
            and len(after) == 2
            and type(after[0]) in (int, float)
            and abs(after[0]) < 1e12
            and isinstance(after[1], str)
            and after[1].isascii()
        ):
            raise unissued_token(p["NextToken"])
        rows = self.store.devices_page(
            STATUS_ROWS["AWAITING_PROVISIONING"], after, descending=descending, limit=limit + 1
        )
        page = [
            self._device_view(row, [], lc.device_state(row, [], now, self.step), full=False) for row in rows[:limit]
        ]
        token = (
            make_token([rows[limit - 1]["created"], rows[limit - 1]["device_id"]], scope) if len(rows) > limit else None
        )
        return with_token({"Devices": page}, "NextToken", token)

    def delete_device(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        row, _, _ = self.live_device(p["DeviceId"])
        if row["deleted_at"] is None:
            self.store.mark_deleted(row["device_id"], self.clock.timestamp())
        return {"DeviceId": row["device_id"]}


@functools.lru_cache(maxsize=1)
def _rogue_ca() -> CertificateAuthority:
    """Another CA, for the ``wrong_ca`` archive fault."""
    return CertificateAuthority.generate(datetime.now(UTC), label="panostage rogue authority")


def _network_status(row: Row) -> dict[str, Any]:
    """What a claimed device reports about its network (from its configuration)."""
    network = json.loads(row["network"]) if row["network"] else {}
    digest = hashlib.sha256(row["device_id"].encode()).digest()
    status: dict[str, Any] = {"LastUpdatedTime": lc.to_datetime(row["claimed_at"])}
    for index, port in enumerate(("Ethernet0", "Ethernet1")):
        config = network.get(port)
        if config is None and index == 1:
            status["Ethernet1Status"] = {"ConnectionStatus": "NOT_CONNECTED"}
            continue
        static = (config or {}).get("StaticIpConnectionInfo") or {}
        address = static.get("IpAddress") or f"10.{digest[0]}.{digest[1]}.{max(digest[2], 2) - index}"
        status[f"{port}Status"] = {
            "ConnectionStatus": "CONNECTED",
            "IpAddress": address,
            "HwAddress": ":".join(f"{b:02x}" for b in (0x02, digest[3], digest[4], digest[5], digest[6], index)),
        }
    servers = (network.get("Ntp") or {}).get("NtpServers") or []
    status["NtpStatus"] = {"ConnectionStatus": "CONNECTED", "NtpServerName": servers[0] if servers else "pool.ntp.org"}
    return status
