"""SIGTERM in the command line: an exception, except while a call that must answer is under way.

The CLI turns SIGTERM into :class:`Terminated`, raised in the main thread, so every undo runs.
ProvisionDevice is the exception: abandoned mid-call, its request may still make a device on
the service whose archive nobody will ever hold.  Inside :func:`held` the signal is only noted;
:class:`Terminated` is raised when the block ends - after the caller has recorded the device, so
its undo deletes it.  Only the main thread holds (the daemon's workers have a handler of their own).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_holding = 0
_pending = False


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every ``finally`` and cleanup runs (not an Exception)."""


def on_sigterm(_signum: int, _frame: object) -> None:
    """The CLI's SIGTERM handler."""
    global _pending
    if _holding:
        _pending = True
        return
    raise Terminated("terminated by SIGTERM")


def pending() -> bool:
    """A SIGTERM came while held (a retry loop should stop retrying)."""
    return _pending


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGTERM until the block ends, then raise it (also in place of an exception the block raised)."""
    global _holding, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding += 1
    try:
        yield
    except BaseException as exc:
        _holding -= 1
        if not _holding and _pending and not isinstance(exc, Terminated):
            _pending = False
            raise Terminated("terminated by SIGTERM") from exc
        raise
    _holding -= 1
    if not _holding and _pending:
        _pending = False
        raise Terminated("terminated by SIGTERM")
