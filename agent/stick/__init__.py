"""Writing configuration archives to USB sticks, durably, atomically, and provably.

Three kinds of target, one protocol (:class:`StickTarget`):

* :class:`DirectoryTarget` - a stick the kernel (or FUSE) has mounted: system calls on a held
  directory descriptor (O_EXCL temp, fsync, rename, directory fsync, O_DIRECT read-back).
* :class:`FatTarget` - an unmounted FAT filesystem in an image file or on a block device, written
  in user space with mtools (bytes passed through a sealed memfd), read back after dropping caches,
  every change undoable through an in-memory journal; block devices held with ``O_EXCL``.

:func:`open_target` picks the kind; :mod:`agent.stick.checks` runs the checks before a write.
"""

from typing import TYPE_CHECKING

from agent.stick.checks import NameState, Preflight, archives, check_space, leftovers, name_state, preflight, require
from agent.stick.directory import DirectoryTarget
from agent.stick.errors import StickConflict, StickIOError, StickNameError, StickRefused
from agent.stick.fat import FatTarget
from agent.stick.model import LOG_DIR, LOG_FILES, Entry, FsInfo, StickTarget, WriteReport
from agent.stick.opener import open_target

if TYPE_CHECKING:  # both kinds follow the protocol: a method or attribute that drifts fails mypy here
    _DIRECTORY_IS_A_TARGET: type[StickTarget] = DirectoryTarget
    _FAT_IS_A_TARGET: type[StickTarget] = FatTarget

__all__ = [
    "LOG_DIR",
    "LOG_FILES",
    "DirectoryTarget",
    "Entry",
    "FatTarget",
    "FsInfo",
    "NameState",
    "Preflight",
    "StickConflict",
    "StickIOError",
    "StickNameError",
    "StickRefused",
    "StickTarget",
    "WriteReport",
    "archives",
    "check_space",
    "leftovers",
    "name_state",
    "open_target",
    "preflight",
    "require",
]
