"""Plan files (CSV, TOML, JSON) and the post-provision actions schema.

A plan entry is one device to provision: its ProvisionDevice request and the
actions the daemon runs once the device reports ONLINE.  Every format carries the
same keys per entry:

=================  ===========================================================
``name``           the device name (required unless ``request`` holds ``Name``)
``description``    free text
``tags``           ``"k=v;k=v"`` (TOML/JSON also: a table, or a list of ``"k=v"``)
``eth0``/``eth1``  ``dhcp`` or ``static``
``eth0_ip``        static address, IPv4[:port] (likewise ``eth1_ip``)
``eth0_mask``      static netmask
``eth0_gateway``   default gateway
``eth0_dns``       DNS servers, ``"a;b"`` (TOML/JSON also: a list)
``ntp``            NTP servers, ``"a;b"`` (TOML/JSON also: a list)
``ota_version``    run an OTA job to this image version once the device is ONLINE
``allow_major``    the OTA may cross a major version (true/false/yes/no/1/0)
``reboot``         reboot the device once it is ONLINE (after the OTA, if any)
``request``        TOML/JSON only: a raw ProvisionDevice request; the keys above override it
``actions``        TOML/JSON only: the actions in their stored form (instead of the three keys)
=================  ===========================================================

Every entry is checked against every documented rule (the ProvisionDevice rules
through :func:`agent.aws.validation.check`, the OTA rules through the same function
for CreateJobForDevices), plus duplicate names in the file and in the plan.  All
problems of all entries come back at once, each with the line the entry starts
on; nothing is returned when any entry is bad, so an import is all or nothing.
"""

from agent.staging.plan.actions import ACTION_KEYS, OTA_KEYS, build_actions, check_actions, describe_actions
from agent.staging.plan.entries import SHOWN_PROBLEMS, PlanEntry, PlanFileError, PlanValidationError, RowProblem
from agent.staging.plan.entry_check import FALSE_WORDS, TRUE_WORDS
from agent.staging.plan.keys import FLAT_KEYS, FORMATS, PORT_KEYS, STRUCTURED_KEYS
from agent.staging.plan.reading import MAX_FILE_BYTES, decode, format_of, parse_plan, read_plan_file

__all__ = [
    "ACTION_KEYS",
    "FALSE_WORDS",
    "FLAT_KEYS",
    "FORMATS",
    "MAX_FILE_BYTES",
    "OTA_KEYS",
    "PORT_KEYS",
    "SHOWN_PROBLEMS",
    "STRUCTURED_KEYS",
    "TRUE_WORDS",
    "PlanEntry",
    "PlanFileError",
    "PlanValidationError",
    "RowProblem",
    "build_actions",
    "check_actions",
    "decode",
    "describe_actions",
    "format_of",
    "parse_plan",
    "read_plan_file",
]
