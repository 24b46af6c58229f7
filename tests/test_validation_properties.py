"""Property tests of ``agent.aws.validation`` against the documented constraints.

Every expectation here is written from /work/shared/FACTS.md and the API
reference pages in /work/shared/seeds/ (plus the public API reference for the
few simple-operation limits noted inline), never from the service model that
``validation`` walks nor from its code, so a wrong model or a wrong walk fails
these tests.

The core is a table of *mutations*: each takes an otherwise valid request,
breaks exactly one documented rule and says which field path(s) must be
reported, with which offending value.  The same table drives the single-rule
tests, the many-rules-at-once tests and the ``validate()`` message tests.
"""

from __future__ import annotations

import copy
import json
import math
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.aws import validation
from agent.errors import ExitCode, InputValidationError, Violation
from tests import strategies as S

OPERATIONS = list(S.VALID)

#: "the value is whatever the implementation found most telling" (union membership, ...)
ANY = object()

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers


def get_in(data: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def set_in(data: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def del_in(data: dict, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data.pop(path[-1], None)


def under(path: str, scope: str) -> bool:
    """``path`` is ``scope`` or inside it (``scope.x``, ``scope[0]``, ``scope key``)."""
    return path == scope or any(path.startswith(scope + sep) for sep in (".", "[", " "))


def overlaps(a: str, b: str) -> bool:
    return under(a, b) or under(b, a)


def with_char(draw, alphabet: str, bad: st.SearchStrategy[str], low: int, high: int) -> str:
    """A string of legal characters, ``low``..``high`` long, with one illegal character inside."""
    body = draw(st.text(alphabet, min_size=max(low - 1, 0), max_size=min(high - 1, 20)))
    at = draw(st.integers(0, len(body)))
    return body[:at] + draw(bad) + body[at:]


# ---------------------------------------------------------------- the mutation table


@dataclass(frozen=True)
class Mutation:
    operation: str
    name: str
    #: field subtrees this mutation writes to; violations under them are its own
    reserves: tuple[str, ...]
    #: (draw, request) -> acceptable outcomes, each {path: offending value or ANY}; edits request in place
    apply: Callable[[Any, dict], list[dict[str, Any]]]
    #: words the rule text must contain (case-insensitive): the documented bound, enum, ...
    rule_words: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:  # short ids in pytest output
        return f"{self.operation}:{self.name}"


MUTATIONS: list[Mutation] = []


def mutation(operation: str, name: str, reserves: tuple[str, ...] | str, rule_words: tuple[str, ...] = ()):
    def register(fn):
        scopes = (reserves,) if isinstance(reserves, str) else reserves
        MUTATIONS.append(Mutation(operation, name, scopes, fn, rule_words))
        return fn

    return register


def replace(operation: str, name: str, path: tuple[str, ...], bad: st.SearchStrategy, rule_words=(), reserve=None):
    """Set ``path`` to a drawn bad value; that path must be reported with that value."""
    dotted = ".".join(path)

    def fn(draw, req):
        value = draw(bad)
        set_in(req, path, value)
        return [{dotted: value}]

    mutation(operation, name, reserve or dotted, rule_words)(fn)


def remove(operation: str, name: str, path: tuple[str, ...], reserve=None):
    """Leave out a required member."""
    dotted = ".".join(path)

    def fn(draw, req):
        del_in(req, path)
        return [{dotted: None}]

    mutation(operation, name, reserve or dotted, ("required",))(fn)


# -- shared bad values

not_a_string = st.one_of(st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2), st.just({"a": "b"}))
not_an_int = st.one_of(
    st.text(string.digits, min_size=1, max_size=3), st.booleans(), st.floats(allow_nan=False), st.just([1])
)
bad_id_chars = st.sampled_from(list(" .!@/:+=*?\"'é\t\n") + ["\u00a0", "日"])
too_long_ids = lambda n: S.exact_text(S.ID_CHARS, n)  # noqa: E731


@st.composite
def bad_ids(draw, high: int = 255):
    """Breaks ``1..high, ^[a-zA-Z0-9\\-\\_]+$``: empty, too long, a stray character, a trailing newline."""
    kind = draw(st.sampled_from(["empty", "long", "char", "newline"]))
    if kind == "empty":
        return ""
    if kind == "long":
        return draw(too_long_ids(high + 1))
    if kind == "newline":
        return draw(st.text(S.ID_CHARS, min_size=1, max_size=10)) + "\n"
    return with_char(draw, S.ID_CHARS, bad_id_chars, 1, high)


@st.composite
def multi_line(draw, high: int):
    """Single-line text of at most ``high`` characters with a line break inside."""
    body = draw(st.text(S.one_line_chars(), max_size=min(high - 1, 20)))
    at = draw(st.integers(0, len(body)))
    return body[:at] + "\n" + body[at:]


@st.composite
def bad_ipv4(draw, with_ports: bool = True):
    """Not ``dotted IPv4[:port 1-65535]``."""
    good = [str(draw(S.octets)) for _ in range(4)]
    kind = draw(
        st.sampled_from(
            ["octet", "zero", "port", "shape", "fixed"] if with_ports else ["octet", "zero", "shape", "fixed"]
        )
    )
    if kind == "octet":
        good[draw(st.integers(0, 3))] = str(draw(st.integers(256, 99999)))
        return ".".join(good)
    if kind == "zero":
        good[draw(st.integers(0, 3))] = draw(st.sampled_from(["00", "01", "010", "0255", "001"]))
        return ".".join(good)
    if kind == "port":
        return ".".join(good) + ":" + draw(st.sampled_from(["0", "65536", "70000", "99999", "", "-1", "1a", "+80"]))
    if kind == "shape":
        parts = draw(st.sampled_from([2, 3, 5]))
        return ".".join(str(draw(S.octets)) for _ in range(parts))
    return draw(
        st.sampled_from(
            [
                "",
                "a.b.c.d",
                "1-2-3-4",
                "1.2.3.4.",
                ".1.2.3.4",
                "1..2.3",
                " 1.2.3.4",
                "1.2.3.4 ",
                "1.2.3.4\n",
                "1.2.3.4/24",
                "0x1.2.3.4",
                "\u0661.2.3.4",
                "1.2.3.4:",
                "::1",
                "fe80::1",
                "1.2.3.-4",
            ]
        )
    )


@st.composite
def bad_ntp(draw):
    """Neither a lowercase DNS name (``^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$``) nor IPv4[:port]."""
    kind = draw(st.sampled_from(["upper", "underscore", "tld", "ip", "fixed"]))
    name = draw(S.ntp_dns_names())
    if kind == "upper":  # the TLD is letters only, so there is always one to raise
        letters = [i for i, c in enumerate(name) if c.isalpha()]
        at = draw(st.sampled_from(letters))
        return name[:at] + name[at].upper() + name[at + 1 :]
    if kind == "underscore":
        return "ntp_" + name
    if kind == "tld":
        return name + "." + draw(st.sampled_from(list("abcxyz") + ["1", "12", "c0m"]))
    if kind == "ip":
        return draw(bad_ipv4())
    return draw(
        st.sampled_from(
            [
                "localhost",
                "pool.ntp.org.",
                "-pool.ntp.org",
                "pool-.ntp.org",
                "pool--x.org" + ".",
                "pool..org",
                "pool.ntp.org\n",
                "pool ntp.org",
                "päól.ntp.org",
                "pool.ntp.org:123",
                "*.ntp.org",
                "",
            ]
        )
    )


# ================================================================ ProvisionDevice

PD = "ProvisionDevice"
replace(PD, "name too long", ("Name",), too_long_ids(256), ("255",))
replace(PD, "name bad characters", ("Name",), st.composite(lambda d: with_char(d, S.ID_CHARS, bad_id_chars, 1, 255))())
replace(PD, "name trailing newline", ("Name",), st.text(S.ID_CHARS, min_size=1, max_size=10).map(lambda s: s + "\n"))
replace(PD, "name empty", ("Name",), st.just(""))
replace(PD, "name wrong type", ("Name",), not_a_string)
remove(PD, "name missing", ("Name",))
replace(PD, "description too long", ("Description",), S.exact_text(S.one_line_chars(), 256), ("255",))
replace(PD, "description with newline", ("Description",), multi_line(255))
replace(PD, "description wrong type", ("Description",), not_a_string)


@st.composite
def _n_valid_tags(draw, n: int) -> dict[str, str]:
    return {f"tag-{i}": draw(st.sampled_from(["", "v", "value"])) for i in range(n)}


replace(PD, "51 tags", ("Tags",), _n_valid_tags(51), ("50",))
replace(PD, "tags as a list", ("Tags",), st.lists(st.tuples(st.just("k"), st.just("v")).map(list), max_size=3))
replace(PD, "tags as a string", ("Tags",), st.just("k=v"))


def _tag_mutation(name: str, bad_key: st.SearchStrategy | None, bad_value: st.SearchStrategy | None, words=()):
    def fn(draw, req):
        tags = draw(
            st.dictionaries(
                st.text(S.ID_CHARS, min_size=1, max_size=8), st.text(S.one_line_chars(), max_size=5), max_size=5
            )
        )
        if bad_key is not None:
            key = draw(bad_key.filter(lambda k: k not in tags))
            tags[key] = draw(S.tag_values)
            req["Tags"] = tags
            return [{"Tags key": key}]
        key = draw(S.tag_keys)
        tags[key] = value = draw(bad_value)
        req["Tags"] = tags
        return [{f"Tags.{key}": value}]

    mutation(PD, name, "Tags", words)(fn)


_tag_mutation("tag key 129 characters", S.exact_text(S.one_line_chars(), 129), None, ("128",))
_tag_mutation("tag key empty", st.just(""), None)
_tag_mutation("tag key with newline", multi_line(128).filter(bool), None)
_tag_mutation("tag value 257 characters", None, S.exact_text(S.one_line_chars(), 257), ("256",))
_tag_mutation("tag value with newline", None, multi_line(256))
_tag_mutation("tag value wrong type", None, not_a_string)

NET = ("NetworkingConfiguration",)


def _eth_mutation(name: str, build: Callable[[Any, str, dict], list[dict[str, Any]]], words=()):
    """One mutation per port; ``build(draw, prefix, eth)`` edits a fresh, valid port config."""
    for port in ("Ethernet0", "Ethernet1"):
        prefix = f"NetworkingConfiguration.{port}"

        def fn(draw, req, port=port, prefix=prefix):
            eth = copy.deepcopy(draw(S.ethernet()))
            outcome = build(draw, prefix, eth)
            set_in(req, NET + (port,), eth)
            return outcome

        mutation(PD, f"{port} {name}", prefix, words)(fn)


def _static(draw, eth: dict) -> dict:
    eth.clear()
    eth.update({"ConnectionType": "STATIC_IP", "StaticIpConnectionInfo": copy.deepcopy(draw(S.static_ip_info()))})
    return eth["StaticIpConnectionInfo"]


def _conn_type_bad(draw, prefix, eth):
    eth["ConnectionType"] = value = draw(
        st.sampled_from(["dhcp", "static_ip", "STATIC", "DHCPv6", "PPPOE", "", " DHCP", "DHCP\n"])
    )
    return [{f"{prefix}.ConnectionType": value}]


def _conn_type_missing(draw, prefix, eth):
    eth.pop("ConnectionType")
    return [{f"{prefix}.ConnectionType": None}]


def _static_without_info(draw, prefix, eth):
    eth.clear()
    eth["ConnectionType"] = "STATIC_IP"
    info = f"{prefix}.StaticIpConnectionInfo"
    # either the whole block is named, or each of its four required members
    return [{info: None}, {f"{info}.{m}": None for m in ("IpAddress", "Mask", "DefaultGateway", "Dns")}]


def _static_missing(member):
    def build(draw, prefix, eth):
        del _static(draw, eth)[member]
        return [{f"{prefix}.StaticIpConnectionInfo.{member}": None}]

    return build


def _static_field(member, bad):
    def build(draw, prefix, eth):
        _static(draw, eth)[member] = value = draw(bad)
        return [{f"{prefix}.StaticIpConnectionInfo.{member}": value}]

    return build


def _dns_entry(bad):
    def build(draw, prefix, eth):
        dns = _static(draw, eth)["Dns"]
        at = draw(st.integers(0, len(dns)))
        dns.insert(at, value := draw(bad))
        return [{f"{prefix}.StaticIpConnectionInfo.Dns[{at}]": value}]

    return build


_eth_mutation("ConnectionType not in enum", _conn_type_bad, ("STATIC_IP", "DHCP"))
_eth_mutation("ConnectionType missing", _conn_type_missing, ("required",))
_eth_mutation("STATIC_IP without StaticIpConnectionInfo", _static_without_info, ("required",))
for _member in ("IpAddress", "Mask", "DefaultGateway", "Dns"):
    _eth_mutation(f"STATIC_IP missing {_member}", _static_missing(_member), ("required",))
_eth_mutation("IpAddress not IPv4[:port]", _static_field("IpAddress", bad_ipv4()))
_eth_mutation("IpAddress wrong type", _static_field("IpAddress", not_a_string))
for _member in ("Mask", "DefaultGateway"):
    _eth_mutation(f"{_member} empty", _static_field(_member, st.just("")))
    _eth_mutation(f"{_member} 256 characters", _static_field(_member, S.exact_text(S.one_line_chars(), 256)), ("255",))
_eth_mutation("Dns entry empty", _dns_entry(st.just("")))
_eth_mutation("Dns entry 256 characters", _dns_entry(S.exact_text(S.one_line_chars(), 256)), ("255",))
_eth_mutation("Dns entry wrong type", _dns_entry(not_a_string))
_eth_mutation("Dns not a list", _static_field("Dns", st.just("8.8.8.8")))

NTP = "NetworkingConfiguration.Ntp"
replace(
    PD,
    "6 NTP servers",
    NET + ("Ntp", "NtpServers"),
    st.lists(S.ntp_servers, min_size=6, max_size=6),
    ("5",),
    reserve=NTP,
)
remove(PD, "Ntp without NtpServers", NET + ("Ntp", "NtpServers"), reserve=NTP)


@mutation(PD, "bad NTP entry", NTP)
def _bad_ntp_entry(draw, req):
    servers = draw(st.lists(S.ntp_servers, max_size=4))
    at = draw(st.integers(0, len(servers)))
    servers.insert(at, value := draw(bad_ntp()))
    set_in(req, NET + ("Ntp",), {"NtpServers": servers})
    return [{f"{NTP}.NtpServers[{at}]": value}]


replace(PD, "NetworkingConfiguration wrong type", NET, st.sampled_from(["DHCP", [], 1]))
replace(PD, "unknown member", ("Nickname",), st.just("x"))

# ================================================================ CreateJobForDevices

JOB = "CreateJobForDevices"
replace(JOB, "DeviceIds empty", ("DeviceIds",), st.just([]), ("1",))
replace(JOB, "DeviceIds two items", ("DeviceIds",), st.lists(S.device_ids, min_size=2, max_size=2), ("1",))
replace(JOB, "DeviceIds not a list", ("DeviceIds",), st.just("device-1"))
remove(JOB, "DeviceIds missing", ("DeviceIds",))


@mutation(JOB, "bad device id", "DeviceIds")
def _bad_device_id(draw, req):
    req["DeviceIds"] = [value := draw(bad_ids())]
    return [{"DeviceIds[0]": value}]


replace(
    JOB,
    "JobType not in enum",
    ("JobType",),
    st.sampled_from(["ota", "reboot", "UPDATE", "", "OTA ", "REBOOT\n"]),
    ("OTA", "REBOOT"),
)
remove(JOB, "JobType missing", ("JobType",))
IMAGE = "DeviceJobConfig.OTAJobConfig.ImageVersion"


@mutation(JOB, "OTA without ImageVersion", ("JobType", "DeviceJobConfig"), ("required",))
def _ota_without_image(draw, req):
    req["JobType"] = "OTA"
    kind = draw(st.sampled_from(["no config", "empty config", "no image"]))
    if kind == "no config":
        req.pop("DeviceJobConfig", None)
    elif kind == "empty config":
        req["DeviceJobConfig"] = {}
    else:
        req["DeviceJobConfig"] = {
            "OTAJobConfig": draw(st.fixed_dictionaries({}, optional={"AllowMajorVersionUpdate": st.booleans()}))
        }
        return [{IMAGE: None}]
    return [{IMAGE: None}, {"DeviceJobConfig.OTAJobConfig": None}]


def _ota_field(name, member, bad, words=()):
    @mutation(JOB, name, ("JobType", "DeviceJobConfig"), words)
    def fn(draw, req):
        config = copy.deepcopy(draw(S.ota_config()))
        config[member] = value = draw(bad)
        req["JobType"] = "OTA"
        req["DeviceJobConfig"] = {"OTAJobConfig": config}
        return [{f"DeviceJobConfig.OTAJobConfig.{member}": value}]


_ota_field("ImageVersion 256 characters", "ImageVersion", S.exact_text(S.one_line_chars(), 256), ("255",))
_ota_field("ImageVersion empty", "ImageVersion", st.just(""))
_ota_field("AllowMajorVersionUpdate not a boolean", "AllowMajorVersionUpdate", st.sampled_from(["true", 1, 0, "yes"]))
replace(JOB, "unknown member", ("Force",), st.just(True))

# ================================================================ CreatePackageImportJob

PKG = "CreatePackageImportJob"
S3 = ("InputConfig", "PackageVersionInputConfig", "S3Location")
OUT = ("OutputConfig", "PackageVersionOutputConfig")
replace(PKG, "ClientToken 65 characters", ("ClientToken",), too_long_ids(65), ("64",))
replace(
    PKG,
    "ClientToken bad characters",
    ("ClientToken",),
    st.composite(lambda d: with_char(d, S.ID_CHARS, bad_id_chars, 1, 64))(),
)
replace(PKG, "ClientToken empty", ("ClientToken",), st.just(""))
remove(PKG, "ClientToken missing", ("ClientToken",))
replace(
    PKG,
    "JobType not in enum",
    ("JobType",),
    st.sampled_from(["NODE_PACKAGE", "node_package_version", "OTA", ""]),
    ("NODE_PACKAGE_VERSION",),
)
remove(PKG, "JobType missing", ("JobType",))
remove(PKG, "InputConfig missing", ("InputConfig",))
remove(PKG, "PackageVersionInputConfig missing", S3[:2], reserve="InputConfig")
remove(PKG, "S3Location missing", S3, reserve="InputConfig")
remove(PKG, "S3Location without BucketName", S3 + ("BucketName",), reserve="InputConfig")
remove(PKG, "S3Location without ObjectKey", S3 + ("ObjectKey",), reserve="InputConfig")
replace(PKG, "S3Location BucketName wrong type", S3 + ("BucketName",), not_a_string, reserve="InputConfig")
remove(PKG, "OutputConfig missing", ("OutputConfig",))
remove(PKG, "PackageVersionOutputConfig missing", OUT, reserve="OutputConfig")
remove(PKG, "PackageName missing", OUT + ("PackageName",), reserve="OutputConfig")
remove(PKG, "PackageVersion missing", OUT + ("PackageVersion",), reserve="OutputConfig")
replace(PKG, "PackageName 129 characters", OUT + ("PackageName",), too_long_ids(129), ("128",), reserve="OutputConfig")
replace(PKG, "PackageName empty", OUT + ("PackageName",), st.just(""), reserve="OutputConfig")
replace(
    PKG,
    "PackageVersion not MAJOR.MINOR",
    OUT + ("PackageVersion",),
    st.one_of(
        st.sampled_from(
            [
                "1",
                "1.2.3",
                "a.b",
                "1.",
                ".1",
                "v1.0",
                "1.0\n",
                "",
                "1,0",
                " 1.0",
                "1.0 ",
                "1..0",
                "-1.0",
                "1.0-beta",
                "\u0661.\u0660",
            ]
        ),
        st.integers(0, 999).map(str),
        st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)).map(lambda t: "{}.{}.{}".format(*t)),
    ),
    reserve="OutputConfig",
)
replace(
    PKG, "MarkLatest not a boolean", OUT + ("MarkLatest",), st.sampled_from(["true", 1, "yes"]), reserve="OutputConfig"
)


@mutation(PKG, "JobTags ResourceType not PACKAGE", "JobTags", ("PACKAGE",))
def _job_tags_resource(draw, req):
    tags = copy.deepcopy(draw(S.job_tags()))
    at = draw(st.integers(0, len(tags) - 1))
    tags[at]["ResourceType"] = value = draw(st.sampled_from(["DEVICE", "package", "APPLICATION", ""]))
    req["JobTags"] = tags
    return [{f"JobTags[{at}].ResourceType": value}]


replace(PKG, "JobTags not a list", ("JobTags",), st.just({"ResourceType": "PACKAGE", "Tags": {"a": "b"}}))

# ================================================================ CreateTask (Snow)

TASK = "CreateTask"
replace(TASK, "no targets", ("targets",), st.just([]), ("1",))
replace(
    TASK, "11 targets", ("targets",), st.lists(S.managed_device_ids, min_size=11, max_size=11, unique=True), ("10",)
)
replace(TASK, "targets not a list", ("targets",), st.just("smd-12345678"))
remove(TASK, "targets missing", ("targets",))
remove(TASK, "command missing", ("command",))


@mutation(TASK, "command with none or both of reboot/unlock", "command", ("reboot", "unlock"))
def _command_union(draw, req):
    req["command"] = draw(st.sampled_from([{}, {"reboot": {}, "unlock": {}}, {"reboot": None, "unlock": None}]))
    # the offending "value" of a union is the implementation's choice (the dict, or the members set)
    return [{"command": ANY}]


replace(TASK, "description 129 characters", ("description",), S.exact_text(S.SNOW_DESCRIPTION_CHARS, 129), ("128",))
replace(TASK, "description empty", ("description",), st.just(""))
replace(
    TASK,
    "description outside [A-Za-z0-9 _.,!#]",
    ("description",),
    st.composite(lambda d: with_char(d, S.SNOW_DESCRIPTION_CHARS, st.sampled_from(list("-/:;?()\n\t'\"@é")), 1, 128))(),
)
replace(TASK, "clientToken 65 characters", ("clientToken",), too_long_ids(65), ("64",))
replace(TASK, "tags as a list", ("tags",), st.just([["k", "v"]]))

# ================================================================ the simple operations

for _op in ("DescribeDevice", "DeleteDevice"):
    remove(_op, "DeviceId missing", ("DeviceId",))
    replace(_op, "DeviceId wrong type", ("DeviceId",), not_a_string)
    replace(_op, "DeviceId breaks 1-255 ^[a-zA-Z0-9\\-\\_]+$", ("DeviceId",), bad_ids())

LD = "ListDevices"
replace(LD, "MaxResults 26", ("MaxResults",), st.just(26), ("25",))
replace(LD, "MaxResults -1", ("MaxResults",), st.just(-1), ("0",))
replace(LD, "MaxResults out of 0-25", ("MaxResults",), st.one_of(st.integers(max_value=-1), st.integers(min_value=26)))
replace(LD, "MaxResults not an integer", ("MaxResults",), not_an_int)
replace(LD, "SortOrder not in enum", ("SortOrder",), st.sampled_from(["ASC", "ascending", "UP"]), ("ASCENDING",))
replace(LD, "NameFilter wrong type", ("NameFilter",), not_a_string)
replace(LD, "unknown member", ("Limit",), st.just(5))

replace("ListDevicesJobs", "MaxResults not an integer", ("MaxResults",), not_an_int)
replace("ListDevicesJobs", "DeviceId wrong type", ("DeviceId",), not_a_string)

for _op in ("DescribeDeviceJob", "DescribePackageImportJob"):
    remove(_op, "JobId missing", ("JobId",))
    replace(_op, "JobId wrong type", ("JobId",), not_a_string)
    replace(_op, "JobId empty", ("JobId",), st.just(""))

for _op in ("DescribeTask", "CancelTask", "DescribeExecution", "ListExecutions"):
    remove(_op, "taskId missing", ("taskId",))
    replace(_op, "taskId wrong type", ("taskId",), not_a_string)
remove("DescribeExecution", "managedDeviceId missing", ("managedDeviceId",))
replace("DescribeExecution", "managedDeviceId wrong type", ("managedDeviceId",), not_a_string)

for _op, _states in (("ListTasks", S.TASK_STATES), ("ListExecutions", S.EXECUTION_STATES)):
    replace(_op, "maxResults 0", ("maxResults",), st.just(0), ("1",))
    replace(_op, "maxResults 101", ("maxResults",), st.just(101), ("100",))
    replace(
        _op, "maxResults out of 1-100", ("maxResults",), st.one_of(st.integers(max_value=0), st.integers(min_value=101))
    )
    replace(_op, "maxResults not an integer", ("maxResults",), not_an_int)
    replace(
        _op, "state not in enum", ("state",), st.sampled_from(["RUNNING", "in_progress", "DONE", ""]), (_states[0],)
    )

BY_OPERATION: dict[str, list[Mutation]] = {op: [m for m in MUTATIONS if m.operation == op] for op in OPERATIONS}


# ---------------------------------------------------------------- drawing broken requests


@st.composite
def broken(draw, operation: str, mutations: list[Mutation]):
    """(request, [(mutation, outcomes)]) with every listed mutation applied to one valid request."""
    request = copy.deepcopy(draw(S.VALID[operation]))
    applied = [(m, m.apply(draw, request)) for m in mutations]
    return request, applied


@st.composite
def several_broken(draw, operation: str):
    """2..5 mutations on disjoint fields of one request."""
    pool = BY_OPERATION[operation]
    chosen: list[Mutation] = []
    for m in draw(st.permutations(pool)):
        if not any(overlaps(a, b) for a in m.reserves for c in chosen for b in c.reserves):
            chosen.append(m)
    count = draw(st.integers(2, min(5, len(chosen))))
    return draw(broken(operation, chosen[:count]))


def _same(found: Any, expected: Any) -> bool:
    if expected is ANY:
        return True
    if isinstance(found, float) and isinstance(expected, float) and math.isnan(found) and math.isnan(expected):
        return True
    return type(found) is type(expected) and found == expected


def assert_reported(violations: list[Violation], applied) -> None:
    """Each mutation's rule is reported exactly at its field(s), with its value; nothing else is."""
    assert all(isinstance(v, Violation) for v in violations), violations
    for v in violations:
        assert any(under(v.path, scope) for m, _ in applied for scope in m.reserves), (
            f"violation outside every broken field: {v}\nall: {violations}"
        )
    for m, outcomes in applied:
        mine = [v for v in violations if any(under(v.path, scope) for scope in m.reserves)]
        found = {v.path: v.value for v in mine}
        assert len(found) == len(mine), f"{m!r}: a field reported twice: {mine}"
        matches = [o for o in outcomes if set(o) == set(found) and all(_same(found[p], o[p]) for p in o)]
        assert matches, f"{m!r}: expected one of {outcomes}, got {mine}"
        for v in mine:
            assert isinstance(v.rule, str) and v.rule.strip(), v
            for word in m.rule_words:
                assert word.lower() in v.rule.lower(), f"{m!r}: rule {v.rule!r} does not mention {word!r}"


# ================================================================ 1. valid requests


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_requests_have_no_violations(operation, data):
    request = data.draw(S.VALID[operation])
    assert validation.check(operation, request) == []
    validation.validate(operation, request)  # does not raise


VALID_EXAMPLES = [
    ("ProvisionDevice", {"Name": "a"}),
    ("ProvisionDevice", {"Name": "x" * 255, "Description": "", "Tags": {}}),
    ("ProvisionDevice", {"Name": "n", "Description": "d" * 255, "Tags": {"k" * 128: "v" * 256, "k": ""}}),
    ("ProvisionDevice", {"Name": "n", "Tags": {f"k{i}": "" for i in range(50)}}),
    (
        "ProvisionDevice",
        {
            "Name": "dev_1-A",
            "NetworkingConfiguration": {
                "Ethernet0": {"ConnectionType": "DHCP"},
                "Ethernet1": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {
                        "IpAddress": "255.255.255.255:65535",
                        "Mask": "255.255.255.0",
                        "DefaultGateway": "192.168.0.1",
                        "Dns": ["8.8.8.8", "1.1.1.1"],
                    },
                },
                "Ntp": {"NtpServers": ["pool.ntp.org", "0.0.0.0:1", "time-a.nist.gov", "a1.b-c.io", "10.0.0.1"]},
            },
        },
    ),
    ("ProvisionDevice", {"Name": "n", "NetworkingConfiguration": {"Ntp": {"NtpServers": []}}}),
    (
        "ProvisionDevice",
        {
            "Name": "n",
            "NetworkingConfiguration": {
                "Ethernet0": {
                    "ConnectionType": "STATIC_IP",
                    "StaticIpConnectionInfo": {
                        "IpAddress": "0.0.0.0:1",
                        "Mask": "m",
                        "DefaultGateway": "g" * 255,
                        "Dns": ["d" * 255],
                    },
                }
            },
        },
    ),
    ("CreateJobForDevices", {"DeviceIds": ["d"], "JobType": "REBOOT"}),
    (
        "CreateJobForDevices",
        {
            "DeviceIds": ["d" * 255],
            "JobType": "OTA",
            "DeviceJobConfig": {"OTAJobConfig": {"ImageVersion": "4.3.55", "AllowMajorVersionUpdate": False}},
        },
    ),
    (
        "CreatePackageImportJob",
        {
            "ClientToken": "t" * 64,
            "JobType": "MARKETPLACE_NODE_PACKAGE_VERSION",
            "InputConfig": {
                "PackageVersionInputConfig": {
                    "S3Location": {"BucketName": "b", "ObjectKey": "k", "Region": "us-west-2"}
                }
            },
            "OutputConfig": {
                "PackageVersionOutputConfig": {"PackageName": "p" * 128, "PackageVersion": "10.0", "MarkLatest": True}
            },
            "JobTags": [{"ResourceType": "PACKAGE", "Tags": {"team": "vision"}}],
        },
    ),
    ("CreateTask", {"targets": ["smd-1"], "command": {"unlock": {}}, "description": "Reboot #1, now!_" + "x" * 112}),
    ("CreateTask", {"targets": [f"smd-{i}" for i in range(10)], "command": {"reboot": {}}}),
    ("ListDevices", {"MaxResults": 0}),
    ("ListDevices", {"MaxResults": 25, "SortOrder": "DESCENDING", "SortBy": "NAME"}),
    ("ListTasks", {"maxResults": 1}),
    ("ListTasks", {"maxResults": 100, "state": "COMPLETED"}),
]


@pytest.mark.parametrize("operation,request_", VALID_EXAMPLES)
def test_boundary_examples_are_valid(operation, request_):
    assert validation.check(operation, request_) == []


# ================================================================ 2. one broken rule at a time


@pytest.mark.parametrize("mut", MUTATIONS, ids=repr)
@FAST
@given(data=st.data())
def test_one_broken_rule_is_reported_at_its_path(mut, data):
    request, applied = data.draw(broken(mut.operation, [mut]))
    assert_reported(validation.check(mut.operation, request), applied)


def test_every_operation_has_mutations():
    assert set(BY_OPERATION) == set(validation.OPERATIONS)
    assert all(BY_OPERATION[op] for op in OPERATIONS)


def test_leaving_out_static_ip_info_names_the_block_or_all_four_members():
    request = {"Name": "n", "NetworkingConfiguration": {"Ethernet1": {"ConnectionType": "STATIC_IP"}}}
    paths = {v.path for v in validation.check("ProvisionDevice", request)}
    block = "NetworkingConfiguration.Ethernet1.StaticIpConnectionInfo"
    assert paths in ({block}, {f"{block}.{m}" for m in ("IpAddress", "Mask", "DefaultGateway", "Dns")})


@pytest.mark.parametrize(
    "address,ok",
    [
        ("1.2.3.4", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("10.0.0.1:1", True),
        ("10.0.0.1:65535", True),
        ("10.0.0.1:9999", True),
        ("10.0.0.1:10000", True),
        ("10.0.0.1:59999", True),
        ("10.0.0.1:60000", True),
        ("10.0.0.1:65499", True),
        ("10.0.0.1:65529", True),
        ("256.0.0.1", False),
        ("1.2.3.04", False),
        ("01.2.3.4", False),
        ("10.0.0.1:0", False),
        ("10.0.0.1:65536", False),
        ("10.0.0.1:100000", False),
        ("1.2.3", False),
        ("1.2.3.4.5", False),
        ("10.0.0.1:", False),
        ("a.b.c.d", False),
        ("1.2.3.4\n", False),
        (" 1.2.3.4", False),
        ("\u0661.2.3.4", False),
        ("1.2.3.\u0664", False),
        ("1.2.3.4:\u0668\u0660", False),  # Arabic-Indic digits are not \d
    ],
)
def test_ip_address_table(address, ok):
    request = {
        "Name": "n",
        "NetworkingConfiguration": {
            "Ethernet0": {
                "ConnectionType": "STATIC_IP",
                "StaticIpConnectionInfo": {
                    "IpAddress": address,
                    "Mask": "255.0.0.0",
                    "DefaultGateway": "10.0.0.254",
                    "Dns": ["10.0.0.2"],
                },
            }
        },
    }
    paths = [v.path for v in validation.check("ProvisionDevice", request)]
    assert paths == ([] if ok else ["NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.IpAddress"])


@settings(max_examples=200, deadline=None)
@given(port=st.integers(-10, 70000))
def test_every_port_number(port):
    request = {"Name": "n", "NetworkingConfiguration": {"Ntp": {"NtpServers": [f"192.0.2.1:{port}"]}}}
    paths = [v.path for v in validation.check("ProvisionDevice", request)]
    assert paths == ([] if 1 <= port <= 65535 else ["NetworkingConfiguration.Ntp.NtpServers[0]"])


# ================================================================ 3. several broken rules at once


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if len({m.reserves for m in BY_OPERATION[op]}) > 1])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_broken_rule_is_reported(operation, data):
    request, applied = data.draw(several_broken(operation))
    assert len(applied) >= 2
    assert_reported(validation.check(operation, request), applied)


def test_a_request_broken_everywhere_reports_every_field():
    request = {
        "Name": "bad name",
        "Description": "a\nb",
        "Tags": {"": "v", "k": "v" * 257},
        "NetworkingConfiguration": {
            "Ethernet0": {
                "ConnectionType": "STATIC_IP",
                "StaticIpConnectionInfo": {
                    "IpAddress": "1.2.3.256",
                    "Mask": "",
                    "DefaultGateway": "",
                    "Dns": ["8.8.8.8", ""],
                },
            },
            "Ethernet1": {"ConnectionType": "WIFI"},
            "Ntp": {"NtpServers": ["Pool.ntp.org", "ok.ntp.org", "ntp_1.example.com", "x.y", "1.2.3.4:0"]},
        },
    }
    eth0 = "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo"
    ntp = "NetworkingConfiguration.Ntp.NtpServers"
    expected = {
        "Name",
        "Description",
        "Tags key",
        "Tags.k",
        f"{eth0}.IpAddress",
        f"{eth0}.Mask",
        f"{eth0}.DefaultGateway",
        f"{eth0}.Dns[1]",
        "NetworkingConfiguration.Ethernet1.ConnectionType",
        f"{ntp}[0]",
        f"{ntp}[2]",
        f"{ntp}[3]",
        f"{ntp}[4]",
    }
    violations = validation.check("ProvisionDevice", request)
    assert sorted(v.path for v in violations) == sorted(expected)


# ================================================================ 4. validate() and its error


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_names_every_path_value_and_rule(operation, data):
    pool = BY_OPERATION[operation]
    if data.draw(st.booleans()) and len({m.reserves for m in pool}) > 1:
        request, applied = data.draw(several_broken(operation))
    else:
        request, applied = data.draw(broken(operation, [data.draw(st.sampled_from(pool))]))
    with pytest.raises(InputValidationError) as caught:
        validation.validate(operation, request)
    error = caught.value
    assert error.exit_code == ExitCode.VALIDATION
    assert operation in error.message
    violations = error.violations
    assert_reported(violations, applied)
    assert f"breaks {len(violations)} documented rule" in error.message
    for v in violations:
        assert v.path in error.message
        assert v.rule in error.message
        assert repr(v.value)[:60] in error.message, f"value of {v.path} not shown"
    # the offending values the test put in are the ones shown
    for _, outcomes in applied:
        for outcome in outcomes:
            if set(outcome) <= {v.path for v in violations}:
                for value in outcome.values():
                    if value is not ANY:
                        assert repr(value)[:60] in error.message
    details = json.loads(json.dumps(error.details))
    assert sorted(d["field"] for d in details["violations"]) == sorted(v.path for v in violations)
    assert all(d["rule"] for d in details["violations"])
    json.dumps(error.to_dict())


# ================================================================ 5. robustness


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=S.json_values)
def test_arbitrary_json_never_raises(operation, params):
    _check_never_raises(operation, params)


@st.composite
def _grafted(draw, operation: str):
    """A valid request with one subtree (or key) swapped for arbitrary JSON: reaches the deep rules."""
    request = copy.deepcopy(draw(S.VALID[operation]))
    spots: list[tuple[Any, Any]] = []

    def walk(node):
        if isinstance(node, dict):
            for key, item in node.items():
                spots.append((node, key))
                walk(item)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                spots.append((node, index))
                walk(item)

    walk(request)
    if spots:
        parent, key = draw(st.sampled_from(spots))
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.text(st.characters(codec=None, categories=None), max_size=5))] = parent.pop(key)
        else:
            parent[key] = draw(S.json_values)
    return request


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_requests_with_arbitrary_grafts_never_raise(operation, data):
    _check_never_raises(operation, data.draw(_grafted(operation)))


def _check_never_raises(operation, params):
    found = validation.check(operation, params)
    assert isinstance(found, list)
    assert all(isinstance(v, Violation) and isinstance(v.path, str) and v.rule for v in found)
    try:
        validation.validate(operation, params)
    except InputValidationError as error:
        assert found and len(error.violations) == len(found)
        json.dumps(error.details)
    else:
        assert found == []


@pytest.mark.parametrize("text", ["\ud800", "ok\udfff", "\udc00" * 300])
def test_lone_surrogates_from_json_escapes_do_not_crash(text):
    # json.loads('"\\ud800"') yields a lone surrogate: the authority can receive one on the wire
    assert json.loads(json.dumps(text)) == text
    found = validation.check("ProvisionDevice", {"Name": text, "Description": text, "Tags": {text: text}})
    assert {v.path for v in found} >= {"Name"}
