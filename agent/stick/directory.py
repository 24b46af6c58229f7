"""A stick mounted by the kernel (or FUSE): plain system calls on a held directory descriptor.

Every operation is relative to a descriptor opened on the stick's root when the
target is opened.  Should the stick be unmounted afterwards, the path would name
an ordinary directory on the workstation's disk; the descriptor still names the
stick (or fails with an I/O error), so key material can never land on the
workstation by accident.  Symlinks are never followed (``O_NOFOLLOW``, lstat).
"""

from __future__ import annotations

from agent.stick.dirwrite import DirectoryWriting
from agent.stick.errors import StickRefused


class DirectoryTarget(DirectoryWriting):
    """The root directory of a mounted stick (or, with ``allow_non_fat``, any directory).

    The held root, its checks and identity: :mod:`agent.stick.dirroot`; reading:
    :mod:`agent.stick.dirread`; writing: :mod:`agent.stick.dirwrite`.
    """

    def format(self, label: str | None = None) -> None:
        raise StickRefused(
            f"{self.path} is a mounted directory; only an unmounted FAT image or device can be formatted",
            reason="stick-mounted",
            hint="unmount the stick and pass its device",
        )

    def __enter__(self) -> DirectoryTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
