"""Shell completion for arguments that name files and sticks (click's ``shell_complete`` functions).

Light on purpose (click and the standard library only): the root group's options use it, and
``panostage --help`` must stay fast.  Paths are completed by the shell itself (click's ``file``
item); ``stage --to`` and ``verify TARGET`` also offer the block devices udev marked as sticks
(tag ``panostage``, property ``PANOSTAGE_STICK=1``: udev-rules/85-panostage.rules), read from udev's
database under /run/udev - a few small files, and nothing at all when udev is absent.

In bash a stick that matches what was typed is offered instead of file names (click's bash script
falls back to file names only when nothing else matches); zsh and fish offer both.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from agent.paths import STICK_TAG

#: udev's run-time database (tags/<tag>/<device id>, data/<device id>) and the kernel's block devices.
UDEV_RUN = Path("/run/udev")
SYS_DEV_BLOCK = Path("/sys/dev/block")


def _is_stick(record: str) -> bool:
    """A udev database record (``/run/udev/data/b8:17``) of a node the rule marks as a stick *now*.

    Tags are sticky (``G:`` keeps every tag a node ever had), so a node that stopped being a
    stick is told by its property, or by its current tags (``Q:``) where udev records them.
    """
    lines = record.splitlines()
    if "E:PANOSTAGE_STICK=1" in lines or f"Q:{STICK_TAG}" in lines:
        return True
    return f"G:{STICK_TAG}" in lines and not any(line.startswith("Q:") for line in lines)


def stick_devices(udev_run: Path | None = None, sys_dev_block: Path | None = None) -> list[str]:
    """Device nodes (``/dev/sdb1``) of the sticks udev knows now; ``[]`` without udev, never an error."""
    run = udev_run or UDEV_RUN
    sysfs = sys_dev_block or SYS_DEV_BLOCK
    try:
        ids = sorted(name for name in os.listdir(run / "tags" / STICK_TAG) if name.startswith("b"))
    except OSError:
        return []
    nodes = []
    for ident in ids:
        try:
            if not _is_stick((run / "data" / ident).read_text(encoding="utf-8", errors="replace")):
                continue
            uevent = (sysfs / ident[1:] / "uevent").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names = [line.partition("=")[2] for line in uevent.splitlines() if line.startswith("DEVNAME=")]
        if names and names[0]:
            nodes.append(f"/dev/{names[0]}")
    return nodes


def complete_path(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A file name, completed by the shell."""
    return [CompletionItem(incomplete, type="file")]


def complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A stick: a file name (image, directory, device), and the sticks udev knows that match.

    The ``file`` item comes first: click's bash script clears what came before it.
    """
    sticks = [CompletionItem(node, help="stick") for node in stick_devices() if node.startswith(incomplete)]
    return [CompletionItem(incomplete, type="file"), *sticks]
