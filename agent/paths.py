"""Where state and scratch live, resolved from settings and the environment; who may use them."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light: stick modules and shell completion use the helpers below
    from agent.config import Settings

#: The group the udev rule gives USB FAT sticks (udev-rules/85-panostage.rules: ``GROUP="panostage"``,
#: ``MODE="0660"``): the service's account, and a technician who stages by hand, are in it.
STICK_GROUP = "panostage"
#: The udev tag the same rule puts on a stick (with the property ``PANOSTAGE_STICK=1``).
STICK_TAG = "panostage"


def state_dir(settings: Settings) -> Path:
    """Persistent state: ``paths.state_dir``, systemd's ``$STATE_DIRECTORY``, then the standard place."""
    return _state_dir_and_source(settings)[0]


def state_dir_source(settings: Settings) -> str:
    """Where :func:`state_dir`'s answer came from, in words (for a message about it)."""
    return _state_dir_and_source(settings)[1]


def _state_dir_and_source(settings: Settings) -> tuple[Path, str]:
    """The state directory and, in words, which rule chose it: one precedence for both."""
    if settings.paths.state_dir:
        return Path(
            settings.paths.state_dir
        ), "paths.state_dir (--state-dir, PANOSTAGE_PATHS_STATE_DIR or the configuration file)"
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]), "$STATE_DIRECTORY (systemd)"
    if os.geteuid() == 0:
        return Path("/var/lib/panostage"), "the default for root"
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "panostage", "the default for a user: $XDG_STATE_HOME/panostage"
    home = Path.home()
    return home / ".local" / "state" / "panostage", f"the default for a user: $HOME/.local/state/panostage, HOME={home}"


def runtime_dir(settings: Settings) -> Path:
    """Scratch that must never reach persistent disk (a tmpfs): ``$RUNTIME_DIRECTORY``, ``$XDG_RUNTIME_DIR``, /run."""
    if settings.paths.runtime_dir:
        return Path(settings.paths.runtime_dir)
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "panostage"
    if os.geteuid() == 0:
        return Path("/run/panostage")
    return Path("/dev/shm") / f"panostage-{os.geteuid()}"


def user_label() -> str:
    """The user this process acts as: ``nobody (uid 65534)``."""
    name = _user_name()
    return f"{name} (uid {os.geteuid()})" if name else f"uid {os.geteuid()}"


def _user_name() -> str | None:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def owner_label(st: os.stat_result) -> str:
    """A file's owner, group and permission bits: ``owner root, group disk, mode 0660 brw-rw----``."""
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {owner}, group {group}, mode {stat.S_IMODE(st.st_mode):04o} {stat.filemode(st.st_mode)}"


def group_member(name: str) -> bool | None:
    """Whether this process holds the group ``name`` (None: there is no such group)."""
    import grp

    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return None
    return gid == os.getegid() or gid in os.getgroups()


def join_group_hint(group: str = STICK_GROUP) -> str:
    """How the user running this joins ``group``."""
    return f"`sudo usermod -aG {group} {_user_name() or 'USER'}`, then log in again (or `newgrp {group}`)"


def dir_problem(path: Path) -> str | None:
    """Why this user cannot keep files in the directory ``path``, creating it if need be (None: it can).

    Names the directory that stops it (``path``, or the ancestor it would be created in or reached
    through), its owner, group and mode, and which permission is missing.
    """
    path = Path(os.path.abspath(path))
    probe, missing_below = path, False
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, PermissionError) as exc:  # missing, or behind a directory it may not enter
            if probe.parent == probe:
                return f"{probe} cannot be examined: {exc.strerror}"
            missing_below = isinstance(exc, FileNotFoundError)
            probe = probe.parent
        except OSError as exc:
            return f"{probe}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{probe} is not a directory" + ("" if probe == path else f" (on the way to {path})")
    if probe == path:
        wanted = {"read": os.R_OK, "write": os.W_OK, "enter": os.X_OK}
        role = ""
    elif missing_below:
        wanted = {"write": os.W_OK, "enter": os.X_OK}
        role = f", needed to create {path}"
    else:
        wanted = {"enter": os.X_OK}
        role = f", needed to reach {path}"
    if "write" in wanted and os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"{probe} is on a read-only filesystem" + role
    missing = [verb for verb, bit in wanted.items() if not os.access(probe, bit, effective_ids=True)]
    if not missing:
        return None
    verbs = " or ".join(missing) if len(missing) < 3 else "read, write or enter"
    return f"user {user_label()} may not {verbs} {probe} ({owner_label(st)}){role}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def fsync_dir(directory: Path) -> None:
    """Flush a directory, so the names created, renamed or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a nearly full filesystem takes part of a write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def discard(path: Path) -> None:
    """Best-effort removal, cleaning up after a failure that is already being reported."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a new temporary file of ``mode``, fsync it and rename it over ``path``.

    On any failure (or interruption) the temporary file is removed and ``path`` is untouched.
    The caller fsyncs the directory when the rename must be durable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
