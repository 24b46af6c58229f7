"""Checks to run before a write, so the stage flow can refuse before anything irreversible; and what
a refusal by the system's permissions means (:func:`permission_denied`, never taken for read-only)."""

from __future__ import annotations

import errno as _errno
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent import paths
from agent.errors import ExitCode
from agent.stick import names
from agent.stick.errors import StickConflict, StickRefused
from agent.stick.model import Entry, FsInfo, StickTarget

if TYPE_CHECKING:  # at run time agent.archive is imported only when an archive is judged
    from agent.archive import ArchiveReport, Limits

State = Literal["absent", "file", "dir", "symlink", "other"]
Access = Literal["read", "write", "read and write"]
_BITS = {"read": 4, "write": 2, "read and write": 6}


def mode_allows(st: os.stat_result, want: Access) -> bool:
    """Whether ``st``'s owner/group/other bits give this process ``want`` (root: always)."""
    if os.geteuid() == 0:
        return True
    if st.st_uid == os.geteuid():
        shift = 6
    elif st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        shift = 3
    else:
        shift = 0
    bits = _BITS[want]
    return (st.st_mode >> shift) & bits == bits


def _unreachable(path: Path) -> Path | None:
    """The first directory above ``path`` this user may not enter (stat of ``path`` then fails EACCES)."""
    for parent in reversed(Path(os.path.abspath(path)).parents):
        if not os.access(parent, os.X_OK, effective_ids=True):
            return parent
    return None


def permission_denied(
    path: Path,
    *,
    want: Access,
    block: bool,
    code: int | None = _errno.EACCES,
    hint: str | None = None,
    subject: str | None = None,
) -> StickRefused:
    """The error for ``path`` that this user may not open for ``want`` (EACCES/EPERM): who, what, how to fix it.

    Names the user, the file's owner, group and mode and, for a block device, the group the udev rule
    gives sticks (:data:`agent.paths.STICK_GROUP`) and how to join it.  Never "read-only": that is
    for media that are (EROFS, a write-protected device).  ``subject`` names ``path`` in the message.
    """
    user = paths.user_label()
    details: dict[str, Any] = {"path": str(path), "user": user, "access": want}
    if code:
        details["errno"] = _errno.errorcode.get(code, str(code))
    try:
        st = os.stat(path)
    except PermissionError:
        blocker = _unreachable(path)
        where = f"{blocker} ({paths.owner_label(os.stat(blocker))})" if blocker else "a directory above it"
        details["blocked_by"] = str(blocker) if blocker else None
        return StickRefused(
            f"permission denied: user {user} may not reach {path}: it may not enter {where}",
            reason="stick-permission-denied",
            hint=hint or "pass a path this user can reach, or run panostage as a user who can",
            details=details,
        )
    except OSError:
        st = None
    owner = paths.owner_label(st) if st else "owner unknown"
    message = f"permission denied: user {user} may not {want} {subject or path} ({owner})"
    if st is not None:
        details.update(owner=st.st_uid, group=st.st_gid, mode=f"{stat.S_IMODE(st.st_mode):04o}")
        if mode_allows(st, want):  # the bits allow it: something else refused (EPERM typically)
            message += (
                "; its mode allows it, so a security policy refused it (an ACL, AppArmor/SELinux, "
                "or a service's device allow-list, DeviceAllow=)"
            )
    return StickRefused(
        message, reason="stick-permission-denied", hint=hint or _access_hint(path, st, block=block), details=details
    )


def _access_hint(path: Path, st: os.stat_result | None, *, block: bool) -> str:
    """What to do: for a file or directory, access or its owner; for a device, the sticks' group."""
    import grp
    import pwd

    group = paths.STICK_GROUP
    if not block:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name if st else "its owner"
        except KeyError:
            owner = f"uid {st.st_uid}" if st else "its owner"
        return f"give this user access to it (`sudo chown`, `sudo chmod`), or run panostage as {owner}"
    try:
        dev_group = grp.getgrgid(st.st_gid).gr_name if st else None
    except KeyError:
        dev_group = str(st.st_gid) if st else None
    member = paths.group_member(group)
    if dev_group == group:
        if member:
            return f"this user is in the {group} group but the device's mode denies it: check the udev rule"
        return (
            f"udev gives sticks to the {group} group (read-write): join it with {paths.join_group_hint(group)}, "
            f"or run as the service's user ({group}) or root"
        )
    return (
        f"{path} belongs to group {dev_group or '?'}, not {group}: udev gives the {group} group (read-write) only to "
        f"USB sticks carrying FAT (udev rule 85-panostage.rules); `panostage stick check {path}` says whether it "
        "is one. A device that is no stick needs root"
    )


@dataclass(frozen=True)
class NameState:
    """What the target name currently is on the stick (found case-insensitively on FAT)."""

    name: str
    state: State
    stored_name: str | None = None
    size: int = 0
    readonly: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "stored_name": self.stored_name,
            "size": self.size,
            "readonly": self.readonly,
        }


def name_state(target: StickTarget, name: str) -> NameState:
    entry = target.lookup(name)
    if entry is None:
        return NameState(name, "absent")
    return NameState(name, entry.kind, entry.name, entry.size, entry.readonly)


def archives(target: StickTarget) -> list[Entry]:
    """Entries in the root a FAT reader could take for ``certificates-omni_*.zip``, of any kind."""
    return [e for e in target.list_root() if names.is_archive_name(e.name)]


def leftovers(target: StickTarget) -> list[Entry]:
    """Temporary archive files an interrupted write left in the root (another program's are not ours)."""
    return [e for e in target.list_root() if names.is_archive_temp(e.name)]


def archive_report(
    target: StickTarget,
    entry: Entry,
    *,
    now: datetime,
    limits: Limits,
    skew_seconds: float = 30.0,
    margin_seconds: float = 0,
    file_name: str | None = None,
    device_name: str | None = None,
) -> ArchiveReport:
    """Verify an archive-like file on the stick, judged by its directory entry first: one larger than any
    archive within ``limits`` is reported ``too_large`` and never read.  Read errors propagate."""
    from agent.archive import too_large, verify_archive

    if entry.size > limits.max_file_bytes:
        return too_large(entry.size, now=now, limits=limits, file_name=file_name, device_name=device_name)
    data = target.read(entry.name, limit=limits.max_file_bytes)  # from the medium: the native reader, no mtools
    return verify_archive(
        data,
        now=now,
        limits=limits,
        skew_seconds=skew_seconds,
        margin_seconds=margin_seconds,
        file_name=file_name,
        device_name=device_name,
    )


def space_needed(size: int, cluster_size: int) -> int:
    """Bytes a file of ``size`` needs: whole clusters, plus one cluster for a directory that grows."""
    cluster = max(cluster_size, 1)
    return -(-size // cluster) * cluster + cluster


def check_space(target: StickTarget, size: int, info: FsInfo | None = None) -> FsInfo:
    """Raise ``stick-full`` (exit IO) unless ``size`` bytes fit; unknown free space passes."""
    return require_space(size, info or target.fs_info())


def require_space(size: int, info: FsInfo) -> FsInfo:
    """Raise ``stick-full`` (exit IO) unless ``size`` bytes fit in ``info``'s free space; unknown free space passes."""
    needed = space_needed(size, info.cluster_size)
    if info.free_bytes is not None and info.free_bytes < needed:
        raise StickRefused(
            f"the stick has {info.free_bytes} bytes free; {size} bytes need {needed}",
            reason="stick-full",
            exit_code=ExitCode.IO,
            hint="free some space or wipe the stick",
            details={"free": info.free_bytes, "needed": needed},
        )
    return info


@dataclass
class Preflight:
    """Everything known before a write; ``problems`` empty means the write may go ahead."""

    fs: FsInfo
    target: NameState
    archives: list[Entry]
    leftovers: list[Entry]
    needed_bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "fs": self.fs.to_dict(),
            "target": self.target.to_dict(),
            "archives": [e.to_dict() for e in self.archives],
            "leftovers": [e.to_dict() for e in self.leftovers],
            "needed_bytes": self.needed_bytes,
            "problems": list(self.problems),
            "ok": self.ok,
        }


def preflight(target: StickTarget, name: str, size: int, *, replace: bool = True) -> Preflight:
    """Inspect the stick for a write of ``size`` bytes to ``name``; never raises for what it finds."""
    info = target.fs_info()
    state = name_state(target, name)
    root = target.list_root()
    found = Preflight(
        fs=info,
        target=state,
        archives=[e for e in root if names.is_archive_name(e.name)],
        leftovers=[e for e in root if names.is_archive_temp(e.name)],
        needed_bytes=space_needed(size, info.cluster_size),
    )
    if info.free_bytes is not None and info.free_bytes < found.needed_bytes:
        found.problems.append(f"not enough space: {info.free_bytes} bytes free, {found.needed_bytes} needed")
    if state.state in ("dir", "symlink", "other"):
        found.problems.append(f"{name} is a {state.state} on the stick")
    elif state.state == "file" and not replace:
        found.problems.append(f"{name} already exists on the stick")
    return found


def require(found: Preflight) -> None:
    """Raise the error that fits a failed :class:`Preflight` (space first, then the name)."""
    if found.ok:
        return
    fs, state = found.fs, found.target.state
    if fs.free_bytes is not None and fs.free_bytes < found.needed_bytes:
        raise StickRefused(
            found.problems[0],
            reason="stick-full",
            exit_code=ExitCode.IO,
            hint="free some space or wipe the stick",
            details=found.to_dict(),
        )
    if state in ("dir", "symlink", "other"):
        raise StickConflict(
            f"{found.target.name} is a {state} on the stick; it will not be replaced",
            reason=f"stick-name-is-{state}",
            details=found.to_dict(),
        )
    raise StickConflict("; ".join(found.problems), reason="stick-name-exists", details=found.to_dict())
