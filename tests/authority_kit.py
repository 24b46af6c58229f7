"""Fixtures: real `panostage authority serve` processes, real boto3 clients over HTTP."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the checkout (tests/ is one below it)
TEST_KEY = "AKIDPANOSTAGETEST01"
TEST_SECRET = "panostage-test-secret-0123456789abcdefghij"
REGION = "eu-central-1"
START_DEADLINE = 30.0


def _base_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    config = tmp / "config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANOSTAGE_", "AWS_"))}
    env.update(
        PANOSTAGE_CONFIG=str(config),
        PANOSTAGE_AUTHORITY_ACCESS_KEY_ID=TEST_KEY,
        PANOSTAGE_AUTHORITY_SECRET_ACCESS_KEY=TEST_SECRET,
        PANOSTAGE_BACKEND_REGION=REGION,  # the region the authority accepts and its clients sign for
        PYTHONPATH=str(ROOT),
    )
    env.update(extra or {})
    return env


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line of the process's stdout, or fail when the deadline passes or it exits."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from the authority before the deadline")
            if not sel.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"authority exited (rc={proc.wait()}) before announcing itself")
            buf += chunk
    finally:
        sel.close()
    return buf.decode()


def check_wire(http_response: Any, model: Any, **_: Any) -> None:
    """Every successful answer holds only documented members, each of its documented wire type.

    (botocore silently drops unknown members, so a misspelt one would otherwise go unnoticed.)
    """
    if http_response.status_code >= 300:
        return
    body = json.loads(http_response.content or b"{}")
    problems = list(_wire_problems(model.output_shape, body, model.name))
    assert not problems, f"{model.name} answered off-model: {problems}"


def _wire_problems(shape: Any, value: Any, path: str) -> Iterator[str]:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            yield f"{path}: expected an object"
            return
        for key, item in value.items():
            if key not in shape.members:
                yield f"{path}.{key}: not a member of {shape.name}"
            else:
                yield from _wire_problems(shape.members[key], item, f"{path}.{key}")
    elif kind == "list":
        if not isinstance(value, list):
            yield f"{path}: expected a list"
            return
        for index, item in enumerate(value):
            yield from _wire_problems(shape.member, item, f"{path}[{index}]")
    elif kind == "map":
        if not isinstance(value, dict):
            yield f"{path}: expected a map"
            return
        for key, item in value.items():
            yield from _wire_problems(shape.value, item, f"{path}.{key}")
    elif kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            yield f"{path}: timestamp must be epoch seconds, got {value!r}"
    elif kind == "blob":
        if not isinstance(value, str):
            yield f"{path}: blob must be base64 text"
    elif kind == "string":
        if not isinstance(value, str):
            yield f"{path}: expected a string"
        elif "enum" in shape.metadata and value not in shape.metadata["enum"]:
            yield f"{path}: {value!r} is not one of {shape.metadata['enum']}"
    elif kind in ("integer", "long") and (isinstance(value, bool) or not isinstance(value, int)):
        yield f"{path}: expected an integer"
    elif kind == "boolean" and not isinstance(value, bool):
        yield f"{path}: expected a boolean"


@dataclass
class Authority:
    """A running `panostage authority serve` process."""

    proc: subprocess.Popen
    endpoint_url: str
    state_dir: Path
    info: dict[str, Any]
    access_key_id: str = TEST_KEY
    secret_access_key: str = TEST_SECRET
    stderr_path: Path | None = None
    _clients: dict[Any, Any] = field(default_factory=dict)

    def client(
        self,
        service: str = "panorama",
        *,
        validate: bool = True,
        attempts: int = 1,
        key: str | None = None,
        secret: str | None = None,
        region: str = REGION,
    ) -> Any:
        import boto3
        from botocore.config import Config

        from agent.aws.model import new_botocore_session

        cache_key = (service, validate, attempts, key, secret, region)
        if cache_key not in self._clients:
            session = boto3.Session(
                botocore_session=new_botocore_session(),
                region_name=region,
                aws_access_key_id=key or self.access_key_id,
                aws_secret_access_key=secret or self.secret_access_key,
            )
            client = session.client(
                service,
                endpoint_url=self.endpoint_url,
                config=Config(
                    retries={"mode": "standard", "total_max_attempts": attempts},
                    parameter_validation=validate,
                    connect_timeout=5,
                    read_timeout=30,
                ),
            )
            client.meta.events.register("after-call.*.*", check_wire)
            self._clients[cache_key] = client
        return self._clients[cache_key]

    @property
    def admin(self):
        from agent.authority.admin import AdminClient

        return AdminClient(self.endpoint_url, self.access_key_id, self.secret_access_key, region=REGION)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def start_authority(
    tmp: Path, *, env: dict[str, str] | None = None, args: list[str] | None = None, state_dir: Path | None = None
) -> Authority:
    """Start `python -m agent authority serve --port 0` and wait for its JSON line."""
    tmp.mkdir(parents=True, exist_ok=True)
    state = state_dir or tmp / "authority-state"
    with open(tmp / "authority.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "authority",
                "serve",
                "--port",
                "0",
                "--state-dir",
                str(state),
                *(args or []),
            ],
            cwd=ROOT,
            env=_base_env(tmp, env),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        info = json.loads(read_line(proc, time.monotonic() + START_DEADLINE))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Authority(proc, info["endpoint_url"], state, info, stderr_path=tmp / "authority.stderr")


@pytest.fixture(scope="session")
def authority_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    """One authority shared by every test whose state does not matter (no clock shifts here)."""
    server = start_authority(tmp_path_factory.mktemp("shared-authority"), args=["--job-step-seconds", "2"])
    yield server
    assert server.stop() == 0


@pytest.fixture
def fresh_authority(tmp_path: Path) -> Iterator[Any]:
    """A factory of authorities of one's own: ``fresh_authority(env=..., args=...)``."""
    started: list[Authority] = []

    def start(**kwargs: Any) -> Authority:
        kwargs.setdefault("args", ["--job-step-seconds", "10"])
        server = start_authority(tmp_path / f"a{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def unique(prefix: str = "dev") -> str:
    """A device name no other test uses."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"
