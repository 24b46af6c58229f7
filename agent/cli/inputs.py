"""Option sets shared by several commands (provision inputs, --wait)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from agent.errors import ExitCode, PanostageError, UsageError
from agent.provision_request import PORTS, PortInput, build_request, parse_tags

_F = TypeVar("_F", bound=Callable[..., Any])


def provision_options(func: _F) -> _F:
    """Every ProvisionDevice input as flags (``device provision``, ``stage``, ``plan add``)."""
    options = [
        click.option(
            "--name", help="Device name: 1-255 of letters, digits, - and _ (required unless --input-json has Name)."
        ),
        click.option("--description", help="Free text, up to 255 characters, one line."),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable, up to 50)."),
        click.option(
            "--ntp",
            multiple=True,
            metavar="SERVER",
            help="NTP server: lowercase DNS name or IPv4[:port] (repeatable, up to 5).",
        ),
        click.option(
            "--input-json",
            type=click.Path(exists=True, dir_okay=False),
            metavar="FILE",
            help="A ProvisionDevice request as JSON; flags override its fields.",
        ),
    ]
    for port in PORTS:
        options += [
            click.option(
                f"--{port}",
                f"{port}_mode",
                type=click.Choice(["dhcp", "static"], case_sensitive=False),
                help=f"How {port} gets its address.",
            ),
            click.option(f"--{port}-ip", metavar="IPV4[:PORT]", help=f"{port} static address."),
            click.option(f"--{port}-mask", metavar="MASK", help=f"{port} static netmask."),
            click.option(f"--{port}-gateway", metavar="ADDR", help=f"{port} default gateway."),
            click.option(f"--{port}-dns", multiple=True, metavar="ADDR", help=f"{port} DNS server (repeatable)."),
        ]
    for option in reversed(options):
        func = option(func)
    return func


#: ``--input-json`` limits: a ProvisionDevice request is a few KiB, nested fewer than 10 levels.
INPUT_JSON_MAX_BYTES = 1 << 20
INPUT_JSON_MAX_DEPTH = 32
_USAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO}


def read_input_json(path: str) -> dict[str, Any]:
    """The JSON object in ``--input-json FILE``, within the size and nesting limits."""
    flag = f"--input-json {path}"
    what = "a ProvisionDevice request as one JSON object in UTF-8"
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_size > INPUT_JSON_MAX_BYTES:
                raise _too_big(flag, info.st_size)
            data = handle.read(INPUT_JSON_MAX_BYTES + 1)  # a pipe or device has no size to stat
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "error")
        if exc.errno in _USAGE_ERRNOS:
            raise UsageError(
                f"{flag}: cannot read it: {exc.strerror} [{name}]",
                hint=f"give a readable file holding {what}",
                details={"path": path, "errno": name},
            ) from None
        raise PanostageError(
            f"{flag}: cannot read it: {exc.strerror} [{name}]",
            exit_code=ExitCode.IO,
            reason="io",
            hint="check the file's filesystem (dmesg), or copy the file elsewhere",
            details={"path": path, "errno": name},
        ) from None
    if len(data) > INPUT_JSON_MAX_BYTES:
        raise _too_big(flag, None)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{flag}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint=f"save the file as UTF-8: it must hold {what}",
        ) from None
    try:
        base = json.loads(text)
    except RecursionError:
        raise _too_deep(flag) from None
    except ValueError as exc:
        raise UsageError(f"{flag}: not valid JSON: {exc}", hint=f"the file must hold {what}") from None
    if _depth(base) > INPUT_JSON_MAX_DEPTH:
        raise _too_deep(flag)
    if not isinstance(base, dict):
        raise UsageError(
            f"{flag}: must hold a JSON object (the ProvisionDevice request), not {type(base).__name__}",
            hint=f"the file must hold {what}",
        )
    return base


def _too_big(flag: str, size: int | None) -> UsageError:
    found = f"{size} bytes" if size is not None else "more than that"
    return UsageError(
        f"{flag}: larger than the {INPUT_JSON_MAX_BYTES} bytes allowed ({found})",
        hint="a ProvisionDevice request is a few KiB: check that this is the right file",
    )


def _too_deep(flag: str) -> UsageError:
    return UsageError(
        f"{flag}: JSON nested more than {INPUT_JSON_MAX_DEPTH} levels deep, the limit",
        hint="a ProvisionDevice request is nested fewer than 10 levels: check that this is the right file",
    )


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= INPUT_JSON_MAX_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def request_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Pop the provision options out of a command's kwargs and build the request."""
    path = opts.pop("input_json", None)
    base = read_input_json(path) if path else None
    ports = {
        port: PortInput(
            mode=opts.pop(f"{port}_mode", None),
            ip=opts.pop(f"{port}_ip", None),
            mask=opts.pop(f"{port}_mask", None),
            gateway=opts.pop(f"{port}_gateway", None),
            dns=list(opts.pop(f"{port}_dns", ()) or ()),
        )
        for port in PORTS
    }
    name = opts.pop("name", None)
    if name is None:
        if base is None or "Name" not in base:
            raise UsageError(
                "--name is missing: the device needs a name",
                hint="give --name NAME (or a Name in the --input-json file)",
                details={"flag": "--name"},
            )
        name = base["Name"]  # any type: validation names it with its rule
    return build_request(
        name=name,
        description=opts.pop("description", None),
        tags=parse_tags(opts.pop("tags", ()) or ()),
        ports=ports,
        ntp=opts.pop("ntp", ()) or (),
        base=base,
    )


def wait_options(func: _F) -> _F:
    """``--wait`` with its ``--timeout`` and ``--interval`` (defaults from [wait])."""
    func = click.option(
        "--interval", type=click.FloatRange(min=0.01), metavar="SECONDS", help="Seconds between polls."
    )(func)
    func = click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up after this long.")(
        func
    )
    func = click.option("--wait", is_flag=True, help="Poll until a terminal state; print it.")(func)
    return func
