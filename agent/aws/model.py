"""The project's own Panorama service definition, loaded through botocore's data path.

botocore >= 1.43.38 ships no ``panorama`` model; older releases do.  Our directory is
put first on the loader's search path (the mechanism behind ``AWS_DATA_PATH``), so the
same definition is used whatever botocore is installed.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import botocore.loaders
    import botocore.session

DATA_DIR = Path(__file__).resolve().parent / "data"
PANORAMA = "panorama"
SNOW = "snow-device-management"


def data_path_value(existing: str | None) -> str:
    """Our data directory first, then whatever the user had (``AWS_DATA_PATH``)."""
    parts = [str(DATA_DIR)] + [p for p in (existing or "").split(os.pathsep) if p and p != str(DATA_DIR)]
    return os.pathsep.join(parts)


def new_botocore_session(*, region: str | None = None, profile: str | None = None) -> botocore.session.Session:
    """A botocore session whose loader finds the project's Panorama model first (for
    ``region`` and the credentials of ``profile`` when given).

    Every session of the process shares one loader, so each model file is parsed and
    held once (validation, clients and the embedded authority all read the same ones).
    """
    import botocore.session

    session = botocore.session.Session()
    data_path = data_path_value(session.get_config_variable("data_path"))
    session.set_config_variable("data_path", data_path)
    session.register_component("data_loader", _shared_loader(data_path))
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    if profile:
        session.set_config_variable("profile", profile)
    if region:
        session.set_config_variable("region", region)
    return session


def parse_timestamp(value: Any) -> Any:
    """A response timestamp as an aware datetime: epoch seconds in UTC, directly; anything else as botocore
    parses it.  botocore's own parser makes every epoch value local-time aware through dateutil's tzlocal,
    which was a third of the CPU of listing a thousand devices (two timestamps each)."""
    from botocore.utils import parse_timestamp as botocore_parse

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return botocore_parse(value)


@lru_cache(maxsize=4)
def _shared_loader(data_path: str) -> botocore.loaders.Loader:
    from botocore.loaders import create_loader

    return create_loader(data_path)
