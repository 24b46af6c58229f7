"""Fault seams for a real `panostage` process, armed from the environment (tests only).

The fault matrix runs the real CLI (and the real daemon).  This module is put on their
``PYTHONPATH`` by :mod:`tests.faults.matrix`; Python imports it at start-up.  With no
``FAULTKIT_*`` variable set it does nothing.  Otherwise it wraps every stick target that
:func:`agent.stick.open_target` returns, so faults hit exactly the stick write, never the
rest of the process (its log, its HTTP calls):

``FAULTKIT_MTOOLS``  JSON ``{tool: [prefix argv...]}``: each call of that mtools program runs
    under the prefix (``fiu-run -x -c "enable name=posix/io/rw/write,failinfo=5"``, a blocker,
    ...) - the :class:`~agent.stick.mtools.Mtools` ``wrap`` seam the stick tests use.
``FAULTKIT_FIU``  JSON ``{"point", "at", "errno"[, "site"]}``: inside ``write_atomic`` only, libfiu
    fails the ``at``-th call of ``point`` in this process (the process runs under ``fiu-run -x``);
    with ``site``, only calls made directly by the Python function of that name are counted
    (``close`` is called by subprocess's plumbing too, a number of times that is no contract).
``FAULTKIT_CALL``  JSON ``{"call": "os.replace", "at", "errno"}``: inside ``write_atomic``, the
    ``at``-th call of that ``os`` function raises OSError - for system calls libfiu 1.1 does not
    wrap (``renameat``, which ``os.replace(..., dir_fd=)`` uses).
``FAULTKIT_HOLD``  JSON ``{"call", "at", "marker"}``: inside ``write_atomic``, the ``at``-th call
    of that ``os`` function first writes ``marker`` and waits for a signal (SIGTERM raises in
    the main thread): a write held open, deterministically, for the signal tests.
``FAULTKIT_VANISH``  JSON ``{"call", "at", "children"}`` (FAT image / block device targets): from
    the ``at``-th call of that ``os`` function inside ``write_atomic`` on, the stick is gone for
    the rest of the process: every I/O call on its device fails with EIO (re-opening it with
    ENODEV), and every later mtools child runs under the ``children`` prefix (libfiu, EIO).
``FAULTKIT_TRACE``  set: print each counted libfiu call with its Python call site (to pick ``at``).
"""

from __future__ import annotations

import errno as _errno
import json
import os

_VARS = ("FAULTKIT_MTOOLS", "FAULTKIT_FIU", "FAULTKIT_CALL", "FAULTKIT_HOLD", "FAULTKIT_VANISH")


def _spec(name: str):
    raw = os.environ.get(name)
    return json.loads(raw) if raw else None


def _counting(real, at: int, action):
    """A stand-in for ``real`` that runs ``action`` on its ``at``-th call (then behaves as ``real``)."""
    calls = [0]

    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            action(*args, **kwargs)
        return real(*args, **kwargs)

    return call


def _raiser(err: str):
    code = getattr(_errno, err)

    def action(*_args, **_kwargs):
        raise OSError(code, os.strerror(code) + " (injected)")

    return action


def _holder(marker: str):
    def action(*_args, **_kwargs):
        import signal

        tmp = marker + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(str(os.getpid()))
        os.rename(tmp, marker)
        while True:
            signal.pause()  # SIGTERM's handler raises out of here

    return action


class _Gone:
    """The stick is gone: every I/O call of this process on the stick's device fails with EIO,
    opening it again with ENODEV, and every later mtools child runs under libfiu EIO."""

    CALLS = ("pread", "pwrite", "read", "write", "fsync", "fdatasync", "posix_fadvise")
    current: _Gone | None = None

    def __init__(self, target, children: list[str]) -> None:
        fd = target.fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.rdev = st.st_rdev or None
        self.fd = fd
        self.path = str(target.path)
        self.children = children
        self.saved: dict = {}

    def start(self) -> None:
        if _Gone.current is not None:
            return
        _Gone.current = self
        for name in self.CALLS:
            real = getattr(os, name)
            self.saved[name] = real
            setattr(os, name, self._io(real))
        self.saved["open"] = os.open
        os.open = self._open(os.open)

    def _ours(self, fd) -> bool:
        if not isinstance(fd, int):
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity or (self.rdev is not None and st.st_rdev == self.rdev)

    def _io(self, real):
        def call(fd, *args, **kwargs):
            if self._ours(fd):
                raise OSError(_errno.EIO, os.strerror(_errno.EIO) + " (the stick is gone)")
            return real(fd, *args, **kwargs)

        return call

    def _open(self, real):
        def call(path, *args, **kwargs):
            text = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
            if text == self.path or text == f"/proc/self/fd/{self.fd}":
                raise OSError(_errno.ENODEV, os.strerror(_errno.ENODEV) + " (the stick is gone)")
            return real(path, *args, **kwargs)

        return call


def _arm_fiu(spec):
    import ctypes

    lib = ctypes.CDLL("libfiu.so.0")
    callback_t = ctypes.CFUNCTYPE(
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_uint),
    )
    lib.fiu_enable_external.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, callback_t]
    calls = [0]

    site = spec.get("site")

    def decide(_name, _failnum, _failinfo, _flags):
        if site is not None:
            import sys

            caller = sys._getframe(1)  # the Python code that made the system call
            if caller.f_code.co_name != site:
                return 0
        calls[0] += 1
        if os.environ.get("FAULTKIT_TRACE"):
            import traceback

            frame = [
                f for f in traceback.extract_stack()[:-1] if "/agent/" in f.filename or "subprocess" in f.filename
            ][-3:]
            os.write(2, f"faultkit: {spec['point']} call {calls[0]}: {[(f.name, f.lineno) for f in frame]}\n".encode())
        return 1 if calls[0] == int(spec["at"]) else 0

    keep = callback_t(decide)
    point = spec["point"].encode()
    if lib.fiu_enable_external(point, 1, ctypes.c_void_p(getattr(_errno, spec["errno"])), 0, keep) != 0:
        raise RuntimeError(f"faultkit: cannot enable {spec['point']} (is the process under fiu-run -x?)")

    def disarm() -> None:
        lib.fiu_disable(point)
        disarm.keep = keep  # the trampoline lives until disarmed

    return disarm


def _window(target) -> None:
    """Wrap ``target.write_atomic`` so the armed faults apply inside it only."""
    real_write = target.write_atomic
    fiu, call, hold, vanish = (_spec(v) for v in ("FAULTKIT_FIU", "FAULTKIT_CALL", "FAULTKIT_HOLD", "FAULTKIT_VANISH"))
    if not (fiu or call or hold or vanish):
        return

    def gone(*args, **_kwargs):
        _Gone(target, vanish.get("children", [])).start()
        if args and _Gone.current._ours(args[0]):  # the call that noticed is on the stick: it fails too
            raise OSError(_errno.EIO, os.strerror(_errno.EIO) + " (the stick is gone)")

    def write_atomic(*args, **kwargs):
        patched = []
        disarm = None
        try:
            for spec, action in (
                (call, call and _raiser(call.get("errno", "EIO"))),
                (hold, hold and _holder(hold["marker"])),
                (vanish, vanish and gone),
            ):
                if spec:
                    name = spec["call"].removeprefix("os.")
                    real = getattr(os, name)
                    stand_in = _counting(real, int(spec["at"]), action)
                    patched.append((name, real, stand_in))
                    setattr(os, name, stand_in)
            if fiu:
                disarm = _arm_fiu(fiu)
            return real_write(*args, **kwargs)
        finally:
            if disarm is not None:
                disarm()
            for name, real, stand_in in reversed(patched):
                if getattr(os, name) is stand_in:
                    setattr(os, name, real)

    target.write_atomic = write_atomic


def _install() -> None:
    if not any(os.environ.get(v) for v in _VARS):
        return
    import agent.stick as stick
    from agent.stick import opener

    mtools = _spec("FAULTKIT_MTOOLS") or {}
    real_open = opener.open_target

    def wrap(tool: str, argv: list[str]) -> list[str]:
        if _Gone.current is not None:
            return [*_Gone.current.children, *argv]
        return [*mtools[tool], *argv] if tool in mtools else argv

    def open_target(spec, **kwargs):
        if (mtools or os.environ.get("FAULTKIT_VANISH")) and kwargs.get("wrap") is None:
            kwargs["wrap"] = wrap
        target = real_open(spec, **kwargs)
        _window(target)
        return target

    opener.open_target = open_target
    stick.open_target = open_target


_install()
