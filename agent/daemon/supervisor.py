"""The daemon's event loop: udev events in, one worker per admitted stick, nothing blocking.

Order of start-up: lock the state directory (one daemon per state), recover what a previous
process left unfinished, start the udev monitor and only then enumerate the sticks already
present (coldplug), then READY=1.  The loop sleeps in poll() on the monitor, a wake-up pipe
(workers finishing, signals) and the next timer; it pings systemd's watchdog itself, so a
stuck loop stops the pings.  SIGTERM: STOPPING=1, cancel the workers (they abandon before
their next irreversible step or finish the step they are in), wait a grace period, exit 0.
"""

from __future__ import annotations

import faulthandler
import fcntl
import functools
import logging
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from agent import paths, sdnotify
from agent.daemon.context import Context
from agent.daemon.followup import FollowUp, FollowUpThread
from agent.daemon.memory import limit_malloc_arenas, release_memory
from agent.daemon.preflight import start_checks
from agent.daemon.recovery import recover
from agent.daemon.technician import Technician
from agent.daemon.worker import StickWorker
from agent.errors import ExitCode, PanostageError
from agent.state import StateDB

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.config import Settings
    from agent.udev import StickEvent, StickInfo, Watcher

log = logging.getLogger("panostage.daemon")

T = TypeVar("T")


class AlreadyRunning(PanostageError):
    exit_code = ExitCode.CONFLICT
    reason = "daemon-running"


class Daemon:
    """One daemon per state directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        watcher: Watcher | None = None,
        technician: Technician | None = None,
    ) -> None:
        """``clock``, ``watcher`` (udev) and ``technician`` are seams: the system's, made here, when not given."""
        from agent.clock import SystemClock

        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.watcher = watcher
        self.technician = technician or Technician(settings.daemon.notify)
        self.state_dir = paths.ensure_private_dir(start_checks(settings))  # the user's rights, checked first
        self.workers: dict[str, StickWorker] = {}
        self.seen: dict[str, StickInfo] = {}  # syspath -> the stick last acted on (to recognise our own change events)
        self.ready: dict[str, tuple[str, datetime, bool]] = {}  # syspath -> (device name, deadline, warned)
        self.finished: queue.Queue[StickWorker] = queue.Queue()
        self.stopping = False
        self._status = ""
        self.quiet = threading.Event()  # set while no stick is being handled: follow-up passes wait for it
        self.quiet.set()
        self._watchdog = sdnotify.watchdog_interval()
        self._frozen = False  # the long-lived objects (the clients, their models) frozen once

    # ------------------------------------------------------------------ life cycle

    def run(self) -> int:
        self._lock()
        limit_malloc_arenas()  # before any worker thread exists
        from agent.aws.backend import open_backend
        from agent.staging.factory import handoff_log, make_stager, operator_name, station_name, verify_limits

        self.state = StateDB(self.state_dir)
        self.state.clear_sticks()
        self.state.set_fact("daemon", {"pid": os.getpid(), "started": self.clock.now().isoformat(), "running": True})
        self.backend = open_backend(self.settings, authority_process=True)
        self.backend.panorama()  # a local authority that cannot start stops the daemon now, not at the first stick
        log_, limits = handoff_log(self.settings), verify_limits(self.settings)
        station, operator = station_name(self.settings), operator_name(self.settings)
        self.ctx = Context(
            settings=self.settings,
            state=self.state,
            backend=self.backend,
            handoff_log=log_,
            clock=self.clock,
            technician=self.technician,
            station=station,
            operator=operator,
            state_dir=self.state_dir,
            runtime_dir=paths.ensure_private_dir(paths.runtime_dir(self.settings)),
            # per stick: with what the daemon holds (its log and names), not made again
            stager_factory=functools.partial(
                make_stager,
                self.settings,
                self.backend,
                self.clock,
                log=log_,
                station=station,
                operator=operator,
                limits=limits,
            ),
            limits=limits,
        )
        self.followup = FollowUp(self.ctx, quiet=self.quiet)
        for action in recover(
            self.state,
            self.backend,
            log_,
            self.clock,
            station=station,
            operator=operator,
            max_attempts=self.settings.daemon.max_attempts,
        ):
            log.warning("recovered: %s", action)
        wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack to the journal
        watcher = self._watcher()
        # without a watchdog the loop sleeps until the next thing due: a pass that ends wakes it to learn when
        self.followup_thread = FollowUpThread(
            self.followup, on_pass_end=self._wake if not self._watchdog else lambda: None
        )
        self.followup_thread.start()
        try:
            for event in watcher.start():
                self._on_event(event)
            release_memory(freeze=False)
            sdnotify.notify("READY=1", f"STATUS={self._status_line()}")
            log.info("watching for sticks (%d present)", len(self.seen))
            self._loop(watcher, wake_r)
        finally:
            self._shutdown(watcher)
            os.close(wake_r)
        return ExitCode.OK

    def _lock(self) -> None:
        self._lock_fd = os.open(self.state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"a daemon already runs on {self.state_dir}", hint="`panostage status` shows it; stop it first"
            ) from None

    def _watcher(self) -> Watcher:
        if self.watcher is None:
            from agent.udev import Watcher

            self.watcher = Watcher(receive_buffer_bytes=self.settings.daemon.receive_buffer_bytes)
        return self.watcher

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ the loop

    def _loop(self, watcher: Watcher, wake_r: int) -> None:
        poller = select.poll()
        poller.register(watcher.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        watchdog = self._watchdog
        last_ping = time.monotonic()
        no_events: list[StickEvent] = []  # what a read that failed gives
        while not self.stopping:
            timeout = self._next_timeout(watchdog)
            for fd, _mask in poller.poll(None if timeout is None else max(0, int(timeout * 1000))):
                if fd == wake_r:
                    self._drain(wake_r)
                else:
                    self.quiet.clear()  # sticks first: a follow-up pass stops at its next call from here on
                    for event in self._contained(watcher.read, default=no_events):
                        self._contained(self._on_event, event, default=None)
            self._reap()
            if self.workers:
                self.quiet.clear()  # also for the sticks found at start (coldplug)
            else:
                self.quiet.set()
            self._timers()
            now = time.monotonic()
            if watchdog and now - last_ping >= watchdog / 4:
                sdnotify.notify("WATCHDOG=1")
                last_ping = now
            self._publish_status()
            self._start_due_pass()  # last: the loop is back in poll() while the pass runs

    def _next_timeout(self, watchdog: float | None) -> float | None:
        waits: list[float] = []
        if watchdog:
            waits.append(watchdog / 4)
        due = self.followup.next_due
        if not watchdog and due is not None and not self.followup_thread.running:
            waits.append(max(0.0, due - time.monotonic()))  # with a watchdog, a due pass waits for the next ping
        for _name, deadline, warned in self.ready.values():
            if not warned:
                waits.append(max(0.0, (self._warn_at(deadline) - self.clock.now()).total_seconds()))
        return min(waits) if waits else None

    def _warn_at(self, deadline: datetime) -> datetime:
        return deadline - timedelta(seconds=self.settings.stage.margin_seconds)

    def _contained(self, func: Callable[..., T], *args: Any, default: T) -> T:
        """One failure is logged and contained: the loop never dies of one bad device."""
        try:
            return func(*args)
        except Exception:
            log.exception("while handling %s", args[0] if args else func.__name__)
            return default

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------------ events

    def _on_event(self, event: StickEvent) -> None:
        from agent.udev import decide, same_filesystem

        syspath = event.syspath
        if event.action == "remove":
            worker = self.workers.get(syspath)
            if worker is not None:
                if not worker.departed:  # flaps repeat the remove: it is said once
                    log.warning(
                        "stick %s left while being handled: its hand-off stops at the next safe step",
                        worker.info.devnode,
                    )
                worker.departed = True
                worker.cancel.set()
            else:
                self.state.forget_stick(syspath)
            self.seen.pop(syspath, None)
            self.ready.pop(syspath, None)
            return
        info = event.info
        if info is None or not (info.is_usb or self.settings.sticks.allow_non_usb):
            return  # the laptop's own disks are nobody's sticks: not shown as refused ones (`stick check` says why)
        known = self.seen.get(syspath)
        if event.action == "change" and same_filesystem(known, info):
            return  # nothing new: e.g. the change udev reports when we close the device we wrote
        if syspath in self.workers:
            return  # already being handled
        self.seen[syspath] = info
        self.ready.pop(syspath, None)
        decision = decide(info, self.settings.sticks, self.state.is_enrolled)
        if not decision.admitted:
            self.state.see_stick(
                syspath, state="rejected", devnode=info.devnode, identity=info.identity, reason=decision.reason
            )
            self.technician.rejected(info.devnode, decision.reason)
            return
        log.info("stick %s admitted (%s)", info.devnode, info.identity)
        self.state.see_stick(syspath, state="admitted", devnode=info.devnode, identity=info.identity)
        self.workers[syspath] = StickWorker(self.ctx, info, on_done=self._worker_done).start()

    def _worker_done(self, worker: StickWorker) -> None:
        """Called in the worker's thread: hand it to the loop."""
        self.finished.put(worker)
        self._wake()

    def _wake(self) -> None:
        """Make the loop's poll() return (from any thread)."""
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full: the loop is waking anyway

    def _reap(self) -> None:
        reaped = False
        while (worker := self._next_finished()) is not None:
            reaped = True
            self.workers.pop(worker.syspath, None)
            if worker.outcome in ("ready", "returned") or worker.collected:
                self.followup.kick()  # an entry was staged, or a returned stick moved one
            if worker.cancel.is_set() and worker.syspath not in self.seen:
                self.state.forget_stick(worker.syspath)  # removed while working
            elif worker.outcome == "ready" and worker.deadline is not None:  # as the worker recorded it
                self.ready[worker.syspath] = (worker.device_name or "", worker.deadline, False)
        if reaped and not self.workers:  # quiet again: give the batch's garbage back (no worker is referenced here)
            self._frozen |= release_memory(freeze=not self._frozen and self.backend.clients_made)

    def _next_finished(self) -> StickWorker | None:
        try:
            return self.finished.get_nowait()
        except queue.Empty:
            return None

    def _timers(self) -> None:
        now = self.clock.now()
        for syspath, (name, deadline, warned) in list(self.ready.items()):
            if not warned and now >= self._warn_at(deadline):
                self.technician.running_out(name, (deadline - now).total_seconds())
                self.ready[syspath] = (name, deadline, True)

    def _start_due_pass(self) -> None:
        due = self.followup.next_due
        if not self.followup_thread.running and due is not None and time.monotonic() >= due:
            self.followup_thread.run_pass()

    # ------------------------------------------------------------------ status and shutdown

    def _status_line(self) -> str:
        counts = self.state.plan_counts()
        working = len(self.workers)
        return (
            f"{len(self.ready)} ready, {working} working; plan {counts['pending']} pending, "
            f"{counts['staged']} staged, {counts['done'] + counts['provisioned']} provisioned, "
            f"{counts['attention']} need attention"
        )

    def _publish_status(self) -> None:
        line = self._status_line()
        if line != self._status:
            self._status = line
            sdnotify.notify(f"STATUS={line}")

    def _shutdown(self, watcher: Watcher) -> None:
        sdnotify.notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping: %d hand-off(s) in flight", len(self.workers))
        for worker in self.workers.values():
            worker.cancel.set()
        deadline = time.monotonic() + self.settings.daemon.shutdown_grace_seconds
        for worker in list(self.workers.values()):
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
                if worker.thread.is_alive():
                    log.error("stick %s: hand-off still running at exit; recovery will resolve it", worker.info.devnode)
        self.quiet.set()  # a pass waiting for the sticks goes on, and ends
        self.followup_thread.stop(max(1.0, deadline - time.monotonic()))
        self._contained(watcher.close, default=None)
        self.state.set_fact("daemon", {"pid": os.getpid(), "stopped": self.clock.now().isoformat(), "running": False})
        self.state.clear_sticks()
        self.backend.close()
        signal.set_wakeup_fd(-1)
        os.close(self._wake_w)


def configure_logging(debug: bool = False) -> None:
    """Plain lines on stderr: journald adds its own timestamps under systemd."""
    import sys

    under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=fmt, stream=sys.stderr, force=True)
