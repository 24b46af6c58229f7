"""One staging laptop driven through the real CLI (state and runtime directories of its own)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fat_kit import mtools
from tests.helpers import run_cli


class Station:
    """One staging laptop: a state dir, a runtime dir, and the CLI."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.state = home / "state"
        self.env = {
            "PANOSTAGE_PATHS_STATE_DIR": str(self.state),
            "PANOSTAGE_PATHS_RUNTIME_DIR": str(home / "run"),
            **env,
        }

    def run(self, *args: str, **env: str):
        return run_cli(*args, env={**self.env, **env}, home=self.home)

    def json(self, *args: str, expect: int = 0, **env: str) -> dict:
        result = self.run(*args, "--json", **env)
        assert result.returncode == expect, f"exit {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout else json.loads(result.stderr)

    def log(self) -> list[dict]:
        return self.json("log", "show")

    def devices(self) -> list[dict]:
        """Devices that exist (a deleted one stays DELETING for a moment)."""
        return [d for d in self.json("device", "list") if d["ProvisioningStatus"] != "DELETING"]


def files_on(image: Path) -> list[str]:
    out = mtools("mdir", "-b", "-i", str(image), "::/").stdout.decode()
    return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.split() if line)
