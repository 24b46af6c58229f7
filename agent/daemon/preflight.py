"""What ``panostage watch`` checks before it starts, so a wrong user is told at once, not at the first stick.

* The state directory (and the runtime directory) must be this user's to create, read and write,
  with the daemon's files in it: otherwise the start fails (exit IO) naming the directory, the
  user, the owner and mode, and what to do.
* The sticks: udev gives them to the ``panostage`` group (udev-rules/85-panostage.rules). A user
  who is neither root nor in it would have every stick refused: a warning at start, not a failure
  (a lab may hand sticks out otherwise).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent import paths
from agent.errors import ExitCode, PanostageError
from agent.state.schema import DB_NAME

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger("panostage.daemon")

#: The files the daemon opens read-write in the state directory (the database's companions too).
STATE_FILES = ("daemon.lock", DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")


class StateDirDenied(PanostageError):
    """The state (or runtime) directory is not this user's to write."""

    exit_code = ExitCode.IO
    reason = "state-dir-access"


def state_dir_problem(state_dir: Path) -> str | None:
    """Why this user cannot keep the daemon's state in ``state_dir`` (None: it can)."""
    problem = paths.dir_problem(state_dir)
    if problem is not None:
        return problem
    for name in STATE_FILES:
        path = state_dir / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        if not os.access(path, os.R_OK | os.W_OK, effective_ids=True):
            return f"user {paths.user_label()} may not read and write {path} ({paths.owner_label(st)})"
    return None


def check_dirs(settings: Settings) -> Path:
    """The state directory, once it and the runtime directory are known to be this user's to write."""
    state_dir = paths.state_dir(settings)
    problem = state_dir_problem(state_dir)
    if problem is not None:
        user = paths.user_label()
        raise StateDirDenied(
            f"the state directory {state_dir} ({paths.state_dir_source(settings)}) is not writable: {problem}",
            hint=(
                "run the daemon as the service's user (`sudo systemctl start panostage`, or `sudo -u panostage "
                "PANOSTAGE_PATHS_STATE_DIR=/var/lib/panostage panostage watch`), or set paths.state_dir "
                "(`--state-dir DIR`, PANOSTAGE_PATHS_STATE_DIR) to a directory this user may write"
            ),
            details={"state_dir": str(state_dir), "from": paths.state_dir_source(settings), "user": user},
        )
    runtime = paths.runtime_dir(settings)
    problem = paths.dir_problem(runtime)
    if problem is not None:
        raise StateDirDenied(
            f"the runtime directory {runtime} is not writable: {problem}",
            reason="runtime-dir-access",
            hint="run the daemon as the service's user, or set paths.runtime_dir (PANOSTAGE_PATHS_RUNTIME_DIR) "
            "to a directory on a tmpfs this user may write",
            details={"runtime_dir": str(runtime)},
        )
    return state_dir


def stick_group_warning() -> str | None:
    """What to warn about when this user cannot open the sticks udev hands out (None: it can)."""
    if os.geteuid() == 0:
        return None
    group = paths.STICK_GROUP
    member = paths.group_member(group)
    if member:
        return None
    user = paths.user_label()
    if member is None:
        return (
            f"there is no group {group} on this machine, the group udev gives sticks (85-panostage.rules is "
            f"not installed: `sudo scripts/install`): sticks will be refused to user {user} (permission denied)"
        )
    return (
        f"user {user} is not in the {group} group, which udev gives the sticks: sticks will be refused "
        f"(permission denied); join it with {paths.join_group_hint(group)}, or run as the service's user"
    )


def start_checks(settings: Settings) -> Path:
    """Everything checked at the daemon's start: fails for the directories, warns for the sticks' group."""
    state_dir = check_dirs(settings)
    warning = stick_group_warning()
    if warning:
        log.warning("%s", warning)
    return state_dir
