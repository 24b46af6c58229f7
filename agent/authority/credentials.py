"""The authority's credentials: made up per process, or kept in its state directory for `authority serve`.

No heavy imports: the daemon makes credentials for its child authority with this module alone.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path


def new_credentials() -> tuple[str, str]:
    """A random access key ID (AKPS + 16) and secret (40 characters)."""
    upper = string.ascii_uppercase + string.digits
    secret_alphabet = string.ascii_letters + string.digits + "+/"
    return (
        "AKPS" + "".join(secrets.choice(upper) for _ in range(16)),
        "".join(secrets.choice(secret_alphabet) for _ in range(40)),
    )


CREDENTIALS_FILE = "credentials.json"


def load_or_create_credentials(state_dir: Path) -> tuple[str, str, Path]:
    """The access key and secret kept in ``<state_dir>/credentials.json`` (0600), made once.

    Creation is race-free: the file is written under a temporary name and hard-linked
    into place, which fails if another process got there first (its file is then used).
    """
    import json
    import os

    from agent.errors import ConfigError
    from agent.paths import discard, fsync_dir, write_all

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / CREDENTIALS_FILE
    if not path.exists():
        access_key_id, secret = new_credentials()
        tmp = state_dir / f".{CREDENTIALS_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                write_all(
                    fd,
                    json.dumps({"access_key_id": access_key_id, "secret_access_key": secret}, indent=2).encode()
                    + b"\n",
                )
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            discard(tmp)
        fsync_dir(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["access_key_id"], data["secret_access_key"], path
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path}: not a credentials file (JSON with access_key_id and secret_access_key)",
            hint="delete it to have new credentials generated",
        ) from None
