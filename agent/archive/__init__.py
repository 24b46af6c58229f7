"""The configuration archive: verify what ProvisionDevice returned and what the stick holds.

Member names are not documented (``network.json`` excepted), so certificates and private keys
are found by content, PEM or DER.  The ZIP is judged from its central directory before a byte is
inflated, and no member is ever inflated past its declared size + 1.  The verdict is an
:class:`Outcome` whose :attr:`~Outcome.exit_code` is the CLI's exit code; every failed check is a
:class:`Problem` with a stable code (:data:`CODES`).

Modules: ``model`` (limits, outcomes, report), ``zipscan`` (the defensive ZIP reader), ``pki``
(certificates and keys by content), ``certcheck`` (the device certificate, its CA, keys and time),
``verify`` (the other checks and the file-name rules), ``keyscan`` (key material in any blob).
"""

from agent.archive.model import (
    CODES,
    ArchiveReport,
    CertificateInfo,
    Limits,
    MemberInfo,
    Outcome,
    Problem,
)
from agent.archive.verify import (
    FILE_PREFIX,
    MANIFEST_MEMBER,
    NETWORK_MEMBER,
    archive_file_name,
    device_name_from_file_name,
    too_large,
    verify_archive,
)

__all__ = [
    "CODES",
    "FILE_PREFIX",
    "MANIFEST_MEMBER",
    "NETWORK_MEMBER",
    "ArchiveReport",
    "CertificateInfo",
    "Limits",
    "MemberInfo",
    "Outcome",
    "Problem",
    "archive_file_name",
    "device_name_from_file_name",
    "too_large",
    "verify_archive",
]
