"""The data a stick target hands out, and the protocol every target follows."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

from agent.stick import names

EntryKind = Literal["file", "dir", "symlink", "other"]
#: What a target is: a mounted stick, a FAT image file, an unmounted FAT block device.
TargetKind = Literal["directory", "image", "block"]

#: The appliance's log directory on the stick and the logs it writes there.
LOG_DIR = "panorama"
LOG_FILES = ("occ.log", "ota_agent.log", "syslog.log", "kern.log")
#: The most panostage reads of any one file on a stick unless told otherwise (an archive or a log
#: is far smaller); a larger file is judged from its directory entry and never read.
READ_LIMIT = 16 * 1024 * 1024


def temp_name(name: str, pid: int) -> str:
    """The temporary name ``write_atomic`` uses in the root for ``name``.

    Never shorter than ``name`` in FAT long-name slots (mtools 4.0.32's mren aborts when a
    rename needs more slots than the old name had), never longer than FAT's 255 characters:
    for very long names the name part is cut so the whole is exactly 255.
    """
    suffix = f".{pid}.tmp"
    full = f".{name}{suffix}"
    return full if len(full) <= 255 else f".{name[: 255 - 1 - len(suffix)]}{suffix}"


#: The largest pid Linux hands out (``/proc/sys/kernel/pid_max`` cannot exceed it).
PID_MAX = 4194304


def stale_temp_of(entry_name: str, name: str) -> bool:
    """Is ``entry_name`` a temporary of ``name`` left by a process that is gone (or by us)?

    Names are compared as FAT compares them (:mod:`agent.stick.names`).  A pid no process
    can have is stale; a live process's temporary is another writer's and is left alone.
    """
    found = names.temp_of(entry_name)
    if found is None:
        return False
    stem, pid = found
    wanted = names.fold(name)
    if stem != wanted and not (len(entry_name) == names.MAX_NAME and wanted.startswith(stem)):
        return False
    if pid == os.getpid() or not 0 < pid <= PID_MAX:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False  # alive: another writer's temp file


def refuse_look_alikes(name: str, present: list[str]) -> None:
    """Refuse to write ``name`` beside a name FAT readers could take for it that mtools and the kernel
    would not replace (``certificateſ-omni_x.zip`` for ``certificates-omni_x.zip``): two entries would
    answer to one name.  Plain case variants are the same entry to every reader and are replaced."""
    from agent.stick.errors import StickConflict

    alike = [p for p in present if names.same(p, name) and p.lower() != name.lower()]
    if alike:
        raise StickConflict(
            f"{alike[0]!r} on the stick is a look-alike of {name!r}: FAT readers may take one for the other",
            reason="stick-look-alike",
            hint="remove it, or pass --replace",
            details={"look_alikes": alike},
        )


@dataclass(frozen=True)
class Entry:
    """One directory entry, never following symlinks."""

    name: str
    kind: EntryKind
    size: int
    readonly: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size": self.size, "readonly": self.readonly}


@dataclass(frozen=True)
class FsInfo:
    """The filesystem a target lives on.  ``free_bytes`` is ``None`` only when the filesystem does not say."""

    fs_type: str  # "vfat" for every FAT, else the mount's type ("ext4", "tmpfs", ...)
    fat_bits: int | None  # 12 / 16 / 32 for FAT
    label: str | None
    uuid: str | None  # FAT volume serial as "ABCD-1234"
    size_bytes: int
    free_bytes: int | None
    cluster_size: int  # allocation unit in bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "fs_type": self.fs_type,
            "fat_bits": self.fat_bits,
            "label": self.label,
            "uuid": self.uuid,
            "size_bytes": self.size_bytes,
            "free_bytes": self.free_bytes,
            "cluster_size": self.cluster_size,
        }


@dataclass(frozen=True)
class WriteReport:
    """What ``write_atomic`` did and how long each step took (milliseconds, in order)."""

    name: str
    size: int
    sha256: str
    replaced: bool
    durations_ms: dict[str, float] = field(default_factory=dict)
    #: Bytes of a replaced older file (and of stale temporaries) overwritten with zeros afterwards.
    scrubbed_bytes: int = 0

    @classmethod
    def of(
        cls, name: str, data: bytes, *, replaced: bool, durations_ms: dict[str, float], scrubbed: int
    ) -> WriteReport:
        """The report of ``data`` written as ``name`` (its size and digest taken from the bytes)."""
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), replaced, durations_ms, scrubbed)

    @property
    def total_ms(self) -> float:
        return round(sum(self.durations_ms.values()), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "replaced": self.replaced,
            "durations_ms": dict(self.durations_ms),
            "total_ms": self.total_ms,
            "scrubbed_bytes": self.scrubbed_bytes,
        }


@runtime_checkable
class StickTarget(Protocol):
    """Somewhere a configuration archive can be put: a mounted directory, a FAT image or block device.

    Implemented by :class:`agent.stick.directory.DirectoryTarget` and :class:`agent.stick.fat.FatTarget`
    (checked statically in :mod:`agent.stick`).  ``rel`` is a ``/``-separated path below the root
    (``..`` refused); names are found as FAT finds them (case-insensitively) on FAT.
    Failures are raised as :class:`~agent.stick.errors.StickRefused` (nothing written),
    :class:`~agent.stick.errors.StickConflict` (the name is taken by what must stay),
    :class:`~agent.stick.errors.StickNameError` (a name FAT cannot hold) or
    :class:`~agent.stick.errors.StickIOError` (a step failed: the error names it); a symlink is never
    followed.
    """

    @property
    def kind(self) -> TargetKind:
        """``"directory"`` (a mounted stick), ``"image"`` (a FAT image file) or ``"block"`` (an unmounted device)."""

    @property
    def path(self) -> Path:
        """What was opened: the stick's directory (symlinks resolved), the image file or the device node."""

    @property
    def last_read_mode(self) -> str | None:
        """How the last :meth:`read` got its bytes ("O_DIRECT", "cached", "fadvise", "mtools", ...); None before."""

    def describe(self) -> dict[str, str | int]:
        """Identity for the hand-off log: kind, path, fs uuid/label, device numbers (JSON-ready)."""

    def fs_info(self) -> FsInfo:
        """The filesystem now: type, FAT bits, label, uuid, size, free bytes (None when unknown), cluster size."""

    def list_root(self) -> list[Entry]:
        """The root directory's entries, sorted by name (``list_dir("")``)."""

    def list_dir(self, rel: str) -> list[Entry]:
        """The entries of the directory ``rel``, sorted by name; ``stick-io`` when there is no such directory."""

    def lookup(self, rel: str) -> Entry | None:
        """The entry at ``rel`` as stored (case-insensitively on FAT), or None."""

    def require_writable(self) -> None:
        """Raise ``stick-read-only`` unless the stick can be written."""

    def check_sound(self) -> list[str]:
        """Raise ``stick-damaged`` when the filesystem contradicts itself; return harmless oddities."""

    def check_room(self, name: str, size: int, *, freeing: Iterable[str] = ()) -> None:
        """Raise unless ``name`` (``size`` bytes) fits once the root entries ``freeing`` are gone: name length,
        free space, root directory slots.  Writes nothing that stays."""

    def write_atomic(self, name: str, data: bytes, *, replace: bool = True) -> WriteReport:
        """Put ``data`` at root ``name`` all at once: a temporary name, flushed, renamed over ``name``, flushed.

        Readers see the old file or the whole new one, never a part; on failure nothing of ours is left.
        Anything but a file at ``name`` (without ``replace``, anything at all) is a conflict; stale temporaries
        of ``name`` and the replaced file's old bytes are zeroed (``scrubbed_bytes``)."""

    def read(self, rel: str, *, bypass_cache: bool = True, limit: int = READ_LIMIT) -> bytes:
        """The file's bytes, from the medium unless ``bypass_cache`` is False; larger than ``limit``:
        ``stick-file-too-large``, unread."""

    def write(self, rel: str, data: bytes) -> None:
        """Write (replace) the file ``rel``, creating its parent directories; flushed before it returns."""

    def remove(self, rel: str, *, missing_ok: bool = False) -> None:
        """Remove a file or an empty directory, flushed; a missing one is ``stick-io`` (ENOENT) unless
        ``missing_ok``."""

    def wipe(self, rel: str, *, missing_ok: bool = False) -> int:
        """Overwrite a file's bytes with zeros in place, flush, then remove it; the bytes zeroed (0 when it is
        missing and ``missing_ok``).  Not a file: a conflict."""

    def format(self, label: str | None = None) -> None:
        """Make an empty filesystem of the same geometry (label kept unless given); a mounted stick refuses."""

    def close(self) -> None:
        """Let the stick go (flushing what is pending); idempotent.  Nothing else may be called afterwards."""

    def __enter__(self) -> Self:
        """The target itself; leaving the ``with`` closes it."""

    def __exit__(self, *exc: object) -> None: ...
