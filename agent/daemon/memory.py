"""The daemon's memory over weeks: what it gives back when it falls idle, and how its heap is laid out.

glibc gives each new thread's allocations an arena of their own, up to eight per core, and a freed
chunk goes back to the arena it came from: after eight sticks at once (a thread each) the idle daemon
kept 1.2-1.5 MiB more than after the same sticks one at a time (measured with the bench's rig).  Two
arenas hold the daemon's few threads, which take turns on the GIL anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

#: mallopt's parameter number for the arena limit (glibc's malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: The daemon's arenas: the main thread's and one more.
ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, loaded once (None where there is no C library to load: nothing to tune)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas from now on (glibc's mallopt); False where that is not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1)


def release_memory(*, freeze: bool) -> bool:
    """Collect garbage, return free heap pages to the system, and with ``freeze`` freeze what survives.

    Called when the daemon falls idle.  Freezing is done once, when the clients exist: what is
    alive then (the clients, their models, caches) lives as long as the daemon, and frozen, later
    collections skip it (each full pass over botocore's objects held the GIL for 35-65 ms).  Only
    once: a frozen object is never collected, and whatever else happened to be alive at that moment
    (a worker, a pass in flight) would stay for good if frozen at every idle - 8 MiB per thousand
    sticks, measured.  Returns whether it froze.
    """
    gc.collect()
    if freeze:
        gc.freeze()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
    return freeze
