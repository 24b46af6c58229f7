"""Faults applied to one call: the injector decides (:mod:`.faults`), this makes it so - the added
latency, then the injected error or dropped connection, before the operation runs or, for an
``after_commit`` rule, after it committed its work (a lost answer)."""

from __future__ import annotations

import time

from agent.authority.apierror import injected
from agent.authority.faults import NO_FAULT, FaultAction, FaultInjector


class DropConnection(Exception):
    """Close the connection without answering (fault ``drop_connection``)."""


def before_call(faults: FaultInjector, service: str, operation: str) -> FaultAction:
    """Decide the call's fault, sleep its latency and fail now unless it fails after the commit;
    the action, for :func:`after_call` (and its ``archive`` defect)."""
    action = faults.decide(service, operation)
    if action is NO_FAULT:
        return action
    if action.latency_s:
        time.sleep(action.latency_s)
    if action.fails and not action.after_commit:
        after_call(action, operation)
    return action


def after_call(action: FaultAction, operation: str) -> None:
    """Raise the failure ``action`` asks for, if any: :class:`DropConnection` or the injected error."""
    if action.drop_connection:
        raise DropConnection()
    if action.error is not None:
        raise injected(action.error, operation)
