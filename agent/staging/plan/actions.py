"""The post-provision actions of an entry (OTA, reboot): their stored form, their rules, their one-line text."""

from __future__ import annotations

from collections.abc import Mapping

from agent.errors import Violation

ACTION_KEYS = ("ota", "reboot")
OTA_KEYS = ("image_version", "allow_major")
#: Stand-in device ID: the OTA rules are checked before the device exists.
_PLACEHOLDER_DEVICE = "plan-entry"


def build_actions(
    ota_version: str | None = None, allow_major: bool | None = None, reboot: bool | None = None
) -> dict[str, object]:
    """The stored form of the actions; ``allow_major`` without a version is kept so the check names it."""
    actions: dict[str, object] = {}
    if ota_version is not None or allow_major:
        ota: dict[str, object] = {"allow_major": bool(allow_major)}
        if ota_version is not None:
            ota = {"image_version": ota_version, **ota}
        actions["ota"] = ota
    if reboot:
        actions["reboot"] = True
    return actions


def check_actions(actions: object, names: Mapping[str, str] | None = None) -> list[Violation]:
    """Every broken rule in ``actions``; ``names`` renames the fields (``"ota.image_version"`` -> ``"--ota"``)."""
    names = {
        "ota": "actions.ota",
        "ota.image_version": "actions.ota.image_version",
        "ota.allow_major": "actions.ota.allow_major",
        "reboot": "actions.reboot",
        "": "actions",
        **(names or {}),
    }
    if not isinstance(actions, Mapping):
        return [Violation(names[""], actions, "must be a table (ota, reboot)")]
    found = [
        Violation(f"{names['']}.{key}", actions[key], f"unknown action; known: {', '.join(ACTION_KEYS)}")
        for key in actions
        if key not in ACTION_KEYS
    ]
    reboot = actions.get("reboot")
    if reboot is not None and not isinstance(reboot, bool):
        found.append(Violation(names["reboot"], reboot, "must be a boolean (true/false)"))
    ota = actions.get("ota")
    if ota is None:
        return found
    if not isinstance(ota, Mapping):
        return found + [Violation(names["ota"], ota, "must be a table (image_version, allow_major)")]
    found += [
        Violation(f"{names['ota']}.{key}", ota[key], f"unknown key; known: {', '.join(OTA_KEYS)}")
        for key in ota
        if key not in OTA_KEYS
    ]
    # the OTA job's documented rules, checked once, where CreateJobForDevices is checked
    from agent.aws import validation

    config = {"ImageVersion": ota.get("image_version")}
    if ota.get("allow_major") is not None:
        config["AllowMajorVersionUpdate"] = ota["allow_major"]
    job = {"DeviceIds": [_PLACEHOLDER_DEVICE], "JobType": "OTA", "DeviceJobConfig": {"OTAJobConfig": config}}
    renames = {
        "DeviceJobConfig.OTAJobConfig.ImageVersion": names["ota.image_version"],
        "DeviceJobConfig.OTAJobConfig.AllowMajorVersionUpdate": names["ota.allow_major"],
    }
    for violation in validation.check("CreateJobForDevices", job):
        path = renames.get(violation.path, names["ota"])
        rule = violation.rule
        if path == names["ota.image_version"] and violation.value is None:
            rule = "required: the image version the OTA installs"
        found.append(Violation(path, violation.value, rule))
    return found


def describe_actions(actions: object) -> str:
    """``ota 4.3.94 (major allowed), reboot``; ``-`` when there is none.

    The daemon keeps its progress in ``actions["progress"]`` (``{"ota": "COMPLETED", "reboot_job": ...}``);
    it is shown in brackets.
    """
    actions = actions if isinstance(actions, Mapping) else {}
    given = actions.get("progress")
    progress = given if isinstance(given, Mapping) else {}

    def state(kind: str) -> str:
        done = progress.get(kind) or ("job started" if progress.get(f"{kind}_job") else None)
        return f" [{done}]" if done else ""

    parts = []
    ota = actions.get("ota")
    if isinstance(ota, Mapping):
        parts.append(
            f"ota {ota.get('image_version')}" + (" (major allowed)" if ota.get("allow_major") else "") + state("ota")
        )
    if actions.get("reboot"):
        parts.append("reboot" + state("reboot"))
    return ", ".join(parts) or "-"
