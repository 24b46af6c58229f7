"""Telling the technician: a desktop notification when a graphical session is there,
a terminal bell otherwise, and always the log.  Neither is needed for the daemon to work."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime
from typing import TextIO

log = logging.getLogger("panostage.technician")


class Technician:
    """The one seam for telling a person something; ``mode`` is [daemon] notify."""

    def __init__(self, mode: str = "auto", *, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.desktop = mode in ("auto", "desktop") and self._desktop_available()
        self.bell = (
            mode in ("auto", "bell") and not self.desktop and bool(getattr(self.stream, "isatty", lambda: False)())
        )

    @staticmethod
    def _desktop_available() -> bool:
        session = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        return bool(session and os.environ.get("DBUS_SESSION_BUS_ADDRESS") and shutil.which("notify-send"))

    def tell(self, title: str, body: str, *, urgent: bool = False) -> None:
        (log.warning if urgent else log.info)("%s: %s", title, body)
        if self.desktop:
            try:
                subprocess.run(
                    ["notify-send", "-a", "panostage", "-u", "critical" if urgent else "normal", title, body],
                    timeout=5,
                    check=False,
                    capture_output=True,
                )
            except (OSError, subprocess.SubprocessError):
                self.desktop = False
        elif self.bell:
            self.stream.write("\a")
            self.stream.flush()

    def ready(self, device: str, devnode: str | None, deadline: datetime) -> None:
        local = deadline.astimezone().strftime("%H:%M:%S")
        self.tell(f"{device} ready", f"stick {devnode}: plug it into the appliance before {local}")

    def failed(self, devnode: str | None, reason: str) -> None:
        self.tell("hand-off failed", f"stick {devnode}: {reason}", urgent=True)

    def running_out(self, device: str, seconds_left: float) -> None:
        self.tell(f"{device}: time running out", f"{int(seconds_left)} s left on its certificate", urgent=True)

    def empty_plan(self, devnode: str | None) -> None:
        self.tell("nothing to stage", f"stick {devnode} left untouched: the plan is empty", urgent=True)

    def departed(self, devnode: str | None, reason: str) -> None:
        """A stick pulled while it was handled: logged, not an alarm (the technician pulled it)."""
        log.info("stick %s: %s", devnode, reason)

    def rejected(self, devnode: str | None, reason: str) -> None:
        log.info("stick %s ignored: %s", devnode, reason)
