"""Poll an asynchronous operation until it reaches a terminal state."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import OperationFailed, WaitTimeout


@dataclass(frozen=True)
class Terminal:
    """Which states end the wait, and which of them are failures."""

    ok: frozenset[str]
    failed: frozenset[str]

    @classmethod
    def of(cls, ok: set[str] | tuple[str, ...], failed: set[str] | tuple[str, ...]) -> Terminal:
        return cls(frozenset(ok), frozenset(failed))


def wait_for(
    fetch: Callable[[], dict[str, Any]],
    state_of: Callable[[dict[str, Any]], str | None],
    terminal: Terminal,
    *,
    what: str,
    timeout: float,
    interval: float,
    check_with: str,
    progress: Callable[[str], None] = lambda _msg: None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Fetch until ``state_of`` is terminal; return the last response.

    A failed terminal state raises :class:`OperationFailed`; running out of time
    raises :class:`WaitTimeout` naming the last state seen.  Both hint ``check_with``: the command that
    describes it (e.g. ``panostage job describe ID``).
    """
    start = monotonic()
    deadline = start + timeout
    last_state: str | None = None
    while True:
        response = fetch()
        last_state = state_of(response)
        elapsed = monotonic() - start
        progress(f"{what}: {last_state or 'unknown'} ({elapsed:.0f}s)")
        if last_state in terminal.ok:
            return response
        if last_state in terminal.failed:
            raise OperationFailed(
                f"{what} ended {last_state}",
                details={"state": last_state, "response": response},
                hint=f"details: `{check_with}`",
            )
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise WaitTimeout(
                f"{what} did not finish within {timeout:g}s; last state seen: {last_state or 'unknown'}",
                details={"state": last_state, "timeout_seconds": timeout},
                hint=f"raise --timeout (wait.timeout_seconds), or check on it later: `{check_with}`",
            )
        sleep(min(interval, remaining))
