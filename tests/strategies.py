"""Hypothesis strategies for requests that keep every documented constraint.

Written from /work/shared/FACTS.md and the API reference pages in
/work/shared/seeds/, never from the service model or from
``agent.aws.validation``: the tests that use these must be able to catch the
implementation (or the model it walks) being wrong.

Only what the documents pin down is generated as "valid".  Where they are
silent (the maximum length of an NTP name, whether an empty ``Dns`` list is
allowed, ...) the strategies stay on the safe side instead of guessing.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

# ---------------------------------------------------------------- alphabets

#: ``^[a-zA-Z0-9\-\_]+$`` (device names, device ids, client tokens, job ids)
ID_CHARS = string.ascii_letters + string.digits + "-_"
#: Snow CreateTask description, ``[A-Za-z0-9 _.,!#]``
SNOW_DESCRIPTION_CHARS = string.ascii_letters + string.digits + " _.,!#"
#: Java and Python disagree on what ``.`` refuses; stay clear of every line terminator.
LINE_TERMINATORS = "\n\r\x85\u2028\u2029"


def one_line_chars(bmp_only: bool = True) -> st.SearchStrategy[str]:
    """Characters that ``^.*$`` accepts in every regex dialect (no surrogates, no line breaks).

    ``bmp_only`` keeps "1 character" == "1 UTF-16 code unit", so boundary lengths hold
    whichever way the length is counted.
    """
    return st.characters(
        codec="utf-8",
        max_codepoint=0xFFFF if bmp_only else None,
        exclude_characters=LINE_TERMINATORS,
    )


def exact_text(alphabet, size: int) -> st.SearchStrategy[str]:
    """Exactly ``size`` characters: a short drawn chunk repeated (drawing 256 characters one by one is slow)."""
    if size == 0:
        return st.just("")
    return st.text(alphabet, min_size=1, max_size=8).map(lambda chunk: (chunk * size)[:size])


def bounded_text(alphabet, low: int, high: int, short: int = 12) -> st.SearchStrategy[str]:
    """Text of ``low``..``high`` characters, the boundaries themselves drawn often."""
    return st.one_of(
        st.text(alphabet, min_size=low, max_size=min(high, max(low, short))),
        exact_text(alphabet, low),
        exact_text(alphabet, high),
    )


def one_line_text(low: int, high: int) -> st.SearchStrategy[str]:
    """Single-line text of ``low``..``high`` characters; short ones may leave the BMP."""
    short_max = min(high // 2, 12)  # a non-BMP character counts twice in UTF-16
    choices = [exact_text(one_line_chars(), low), exact_text(one_line_chars(), high)]
    if short_max >= low:
        choices.append(st.text(one_line_chars(bmp_only=False), min_size=low, max_size=short_max))
    return st.one_of(*choices)


# ---------------------------------------------------------------- names and ids

names = bounded_text(ID_CHARS, 1, 255)  # ProvisionDevice.Name, device ids
device_ids = bounded_text(ID_CHARS, 1, 255)
client_tokens = bounded_text(ID_CHARS, 1, 64)  # CreatePackageImportJob.ClientToken
job_ids = st.text(ID_CHARS, min_size=1, max_size=40)
next_tokens = st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=40)

# ---------------------------------------------------------------- tags

tag_keys = st.one_of(
    exact_text(one_line_chars(), 1),
    exact_text(one_line_chars(), 128),
    st.text(one_line_chars(False), min_size=1, max_size=20),
)
tag_values = st.one_of(st.just(""), exact_text(one_line_chars(), 256), st.text(one_line_chars(False), max_size=20))


@st.composite
def tag_maps(draw, max_entries: int = 50) -> dict[str, str]:
    """0..50 entries; 0, 1 and 50 drawn often; keys and values at their length limits."""
    count = draw(st.one_of(st.integers(0, 5), st.sampled_from([0, 1, max_entries])))
    keys = draw(st.lists(tag_keys, min_size=min(count, 3), max_size=min(count, 3), unique=True))
    filler = (f"key-{i}" for i in range(max_entries + 10))
    while len(keys) < count:
        key = next(filler)
        if key not in keys:
            keys.append(key)
    drawn = keys[:3]  # the filler keys get cheap values: drawing 50 rich ones is slow
    return {key: draw(tag_values) if key in drawn else draw(st.sampled_from(["", "v", "x" * 256])) for key in keys}


# ---------------------------------------------------------------- IPv4 and NTP

octets = st.integers(0, 255)
ports = st.one_of(st.sampled_from([1, 65535]), st.integers(1, 65535))
plain_ipv4 = st.tuples(octets, octets, octets, octets).map(lambda t: ".".join(map(str, t)))


@st.composite
def ipv4_with_optional_port(draw) -> str:
    address = draw(plain_ipv4)
    if draw(st.booleans()):
        address += f":{draw(ports)}"
    return address


#: ``[a-z0-9]+(-[a-z0-9]+)*``
_label = st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6), min_size=1, max_size=3).map(
    "-".join
)
_tld = st.text(string.ascii_lowercase, min_size=2, max_size=6)


@st.composite
def ntp_dns_names(draw) -> str:
    """``^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$``"""
    labels = draw(st.lists(_label, min_size=1, max_size=3))
    return ".".join(labels + [draw(_tld)])


ntp_servers = st.one_of(ntp_dns_names(), ipv4_with_optional_port())

#: Mask, DefaultGateway, each Dns entry: 1..255 characters (realistically an address)
address_fields = st.one_of(plain_ipv4, one_line_text(1, 255))

# ---------------------------------------------------------------- ProvisionDevice


def static_ip_info() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "IpAddress": ipv4_with_optional_port(),
            "Mask": address_fields,
            "DefaultGateway": address_fields,
            "Dns": st.lists(address_fields, min_size=1, max_size=3),
        }
    )


def ethernet() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.just({"ConnectionType": "DHCP"}),
        st.fixed_dictionaries({"ConnectionType": st.just("STATIC_IP"), "StaticIpConnectionInfo": static_ip_info()}),
    )


def ntp() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"NtpServers": st.lists(ntp_servers, max_size=5)})


def networking() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={"Ethernet0": ethernet(), "Ethernet1": ethernet(), "Ntp": ntp()})


descriptions = st.one_of(st.just(""), one_line_text(0, 255))


def provision_device() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"Name": names},
        optional={"Description": descriptions, "Tags": tag_maps(), "NetworkingConfiguration": networking()},
    )


# ---------------------------------------------------------------- jobs

image_versions = one_line_text(1, 255)


def ota_config() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"ImageVersion": image_versions}, optional={"AllowMajorVersionUpdate": st.booleans()})


def create_job_for_devices() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.fixed_dictionaries(
            {
                "DeviceIds": st.lists(device_ids, min_size=1, max_size=1),
                "JobType": st.just("OTA"),
                "DeviceJobConfig": st.fixed_dictionaries({"OTAJobConfig": ota_config()}),
            }
        ),
        st.fixed_dictionaries(
            {"DeviceIds": st.lists(device_ids, min_size=1, max_size=1), "JobType": st.just("REBOOT")}
        ),
    )


# ---------------------------------------------------------------- package import

bucket_names = st.text(string.ascii_lowercase + string.digits, min_size=3, max_size=30)
object_keys = st.text(string.ascii_letters + string.digits + "/._-", min_size=1, max_size=60)
regions = st.sampled_from(["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "ca-central-1"])
package_names = bounded_text(ID_CHARS, 1, 128)
package_versions = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda t: f"{t[0]}.{t[1]}")
small_tags = st.dictionaries(
    st.text(ID_CHARS, min_size=1, max_size=20), st.text(ID_CHARS, max_size=20), min_size=1, max_size=3
)


def s3_location() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"BucketName": bucket_names, "ObjectKey": object_keys}, optional={"Region": regions})


def package_output() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"PackageName": package_names, "PackageVersion": package_versions}, optional={"MarkLatest": st.booleans()}
    )


def job_tags() -> st.SearchStrategy[list]:
    return st.lists(
        st.fixed_dictionaries({"ResourceType": st.just("PACKAGE"), "Tags": small_tags}), min_size=1, max_size=2
    )


def create_package_import_job() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "ClientToken": client_tokens,
            "JobType": st.sampled_from(["NODE_PACKAGE_VERSION", "MARKETPLACE_NODE_PACKAGE_VERSION"]),
            "InputConfig": st.fixed_dictionaries(
                {"PackageVersionInputConfig": st.fixed_dictionaries({"S3Location": s3_location()})}
            ),
            "OutputConfig": st.fixed_dictionaries({"PackageVersionOutputConfig": package_output()}),
        },
        optional={"JobTags": job_tags()},
    )


# ---------------------------------------------------------------- Snow Device Management

managed_device_ids = st.text(string.ascii_lowercase + string.digits, min_size=8, max_size=20).map(lambda s: "smd-" + s)
task_ids = st.text(string.ascii_lowercase + string.digits, min_size=8, max_size=20).map(lambda s: "st-" + s)
snow_descriptions = bounded_text(SNOW_DESCRIPTION_CHARS, 1, 128)
snow_commands = st.sampled_from([{"reboot": {}}, {"unlock": {}}])
TASK_STATES = ["IN_PROGRESS", "CANCELED", "COMPLETED"]
EXECUTION_STATES = ["QUEUED", "IN_PROGRESS", "CANCELED", "FAILED", "SUCCEEDED", "REJECTED", "TIMED_OUT"]
snow_max_results = st.one_of(st.sampled_from([1, 100]), st.integers(1, 100))


def create_task() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "targets": st.one_of(
                st.lists(managed_device_ids, min_size=1, max_size=10, unique=True),
                st.lists(managed_device_ids, min_size=10, max_size=10, unique=True),
            ),
            "command": snow_commands,
        },
        optional={
            "description": snow_descriptions,
            "clientToken": bounded_text(ID_CHARS, 1, 64),
            "tags": small_tags,
        },
    )


# ---------------------------------------------------------------- the simple operations

VALID = {
    "ProvisionDevice": provision_device(),
    "CreateJobForDevices": create_job_for_devices(),
    "CreatePackageImportJob": create_package_import_job(),
    "CreateTask": create_task(),
    "DescribeDevice": st.fixed_dictionaries({"DeviceId": device_ids}),
    "DeleteDevice": st.fixed_dictionaries({"DeviceId": device_ids}),
    "ListDevices": st.fixed_dictionaries(
        {},
        optional={
            "MaxResults": st.one_of(st.sampled_from([0, 25]), st.integers(0, 25)),
            "NextToken": next_tokens,
            "NameFilter": st.text(ID_CHARS, min_size=1, max_size=20),
            "SortBy": st.sampled_from(["DEVICE_ID", "CREATED_TIME", "NAME", "DEVICE_AGGREGATED_STATUS"]),
            "SortOrder": st.sampled_from(["ASCENDING", "DESCENDING"]),
        },
    ),
    "ListDevicesJobs": st.fixed_dictionaries(
        {}, optional={"DeviceId": device_ids, "NextToken": next_tokens, "MaxResults": st.integers(1, 25)}
    ),
    "DescribeDeviceJob": st.fixed_dictionaries({"JobId": job_ids}),
    "DescribePackageImportJob": st.fixed_dictionaries({"JobId": job_ids}),
    "DescribeTask": st.fixed_dictionaries({"taskId": task_ids}),
    "DescribeExecution": st.fixed_dictionaries({"taskId": task_ids, "managedDeviceId": managed_device_ids}),
    "ListTasks": st.fixed_dictionaries(
        {}, optional={"maxResults": snow_max_results, "nextToken": next_tokens, "state": st.sampled_from(TASK_STATES)}
    ),
    "ListExecutions": st.fixed_dictionaries(
        {"taskId": task_ids},
        optional={"maxResults": snow_max_results, "nextToken": next_tokens, "state": st.sampled_from(EXECUTION_STATES)},
    ),
    "CancelTask": st.fixed_dictionaries({"taskId": task_ids}),
}

# ---------------------------------------------------------------- arbitrary JSON

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    # JSON's \uXXXX escapes can carry lone surrogates: json.loads('"\\ud800"') == "\ud800"
    st.text(st.characters(codec=None, categories=None), max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
