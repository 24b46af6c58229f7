"""What every stick worker and the follow-up share with the daemon, held once for its lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.archive import Limits
    from agent.aws.backend import ServiceBackend
    from agent.clock import Clock
    from agent.config import Settings
    from agent.daemon.technician import Technician
    from agent.handoff_log import HandoffLog
    from agent.staging.handoff import Checkpoint
    from agent.staging.stage import Stager
    from agent.state import StateDB


class StagerFactory(Protocol):
    """Makes the Stager for one stick's hand-off, with that worker's ``checkpoint`` (the daemon's: the settings,
    backend, clock, hand-off log and names it holds)."""

    def __call__(self, *, checkpoint: Checkpoint) -> Stager: ...


@dataclass
class Context:
    """What every worker shares with the daemon."""

    settings: Settings
    state: StateDB  # each thread has its own connection, closed when the thread ends
    backend: ServiceBackend
    handoff_log: HandoffLog
    clock: Clock
    technician: Technician
    station: str
    operator: str
    state_dir: Path
    runtime_dir: Path
    stager_factory: StagerFactory
    limits: Limits  # what an archive may be (the [verify] settings), for every check of one
