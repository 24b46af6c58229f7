"""Option sets shared by several commands (provision inputs, --wait)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from agent.errors import UsageError
from agent.provision_request import PORTS, PortInput, build_request, parse_tags


def provision_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every ProvisionDevice input as flags (``device provision``, ``stage``, ``plan add``)."""
    options = [
        click.option("--name", required=True, help="Device name: 1-255 of letters, digits, - and _."),
        click.option("--description", help="Free text, up to 255 characters, one line."),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable, up to 50)."),
        click.option("--ntp", multiple=True, metavar="SERVER", help="NTP server: lowercase DNS name or IPv4[:port] (repeatable, up to 5)."),
        click.option("--input-json", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                     help="A ProvisionDevice request as JSON; flags override its fields."),
    ]
    for port in PORTS:
        options += [
            click.option(f"--{port}", f"{port}_mode", type=click.Choice(["dhcp", "static"], case_sensitive=False),
                         help=f"How {port} gets its address."),
            click.option(f"--{port}-ip", metavar="IPV4[:PORT]", help=f"{port} static address."),
            click.option(f"--{port}-mask", metavar="MASK", help=f"{port} static netmask."),
            click.option(f"--{port}-gateway", metavar="ADDR", help=f"{port} default gateway."),
            click.option(f"--{port}-dns", multiple=True, metavar="ADDR", help=f"{port} DNS server (repeatable)."),
        ]
    for option in reversed(options):
        func = option(func)
    return func


def request_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Pop the provision options out of a command's kwargs and build the request."""
    base = None
    path = opts.pop("input_json", None)
    if path:
        try:
            base = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"--input-json {path}: not valid JSON: {exc}") from None
        if not isinstance(base, dict):
            raise UsageError(f"--input-json {path}: must hold a JSON object (the ProvisionDevice request)")
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
    return build_request(
        name=opts.pop("name"),
        description=opts.pop("description", None),
        tags=parse_tags(opts.pop("tags", ()) or ()),
        ports=ports,
        ntp=opts.pop("ntp", ()) or (),
        base=base,
    )


def wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--wait`` with its ``--timeout`` and ``--interval`` (defaults from [wait])."""
    func = click.option("--interval", type=click.FloatRange(min=0.01), metavar="SECONDS", help="Seconds between polls.")(func)
    func = click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up after this long.")(func)
    func = click.option("--wait", is_flag=True, help="Poll until a terminal state; print it.")(func)
    return func
