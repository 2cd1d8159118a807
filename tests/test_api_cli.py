"""`iotfsm api-token` and `iotfsm platform --api` as processes: a token made by the command,
used against the platform's API over a real Mosquitto, revoked while the platform runs; the token
never appears in argv, the store or the platform's log."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import attrs
import httpx
import pytest

from iotfsm.cli import main
from iotfsm.testing import Mosquitto, wait_for


@attrs.frozen
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def iotfsm(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """`iotfsm ARGS` in this process (an interpreter start per command would cost seconds each
    on a loaded machine); the platform itself runs as a child process below."""

    def run(*args: str) -> Ran:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


class Platform:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotfsm", "--log-level", "info", "platform", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self.events.append(json.loads(line))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return err


def test_a_token_from_the_command_opens_the_api_until_revoked(
    mosquitto: Mosquitto, tmp_path: Path, iotfsm: Callable[..., Ran]
) -> None:
    data = tmp_path / "platform"
    made = iotfsm(
        "api-token", "create", "--data-dir", str(data), "--name", "ci", "--scope", "write"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("iotfsm_") and len(token) > 40
    listed = iotfsm("api-token", "list", "--data-dir", str(data), "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == ["ci"] and token not in listed.stdout
    assert json.loads(listed.stdout)[0]["scopes"] == ["write"]
    duplicate = iotfsm("api-token", "create", "--data-dir", str(data), "--name", "ci")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    out = tmp_path / "viewer.token"
    to_file = iotfsm(
        "api-token", "create", "--data-dir", str(data), "--name", "viewer", "--out", str(out)
    )
    assert to_file.returncode == 0, to_file.stderr
    kept = out.read_text().strip()
    assert kept.startswith("iotfsm_") and kept not in to_file.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    hostile = iotfsm("api-token", "create", "--data-dir", str(data), "--name", "../x")
    assert hostile.returncode == 1 and "token name" in hostile.stderr

    common = ("--broker", mosquitto.url, "--data-dir", str(data), "--http", "127.0.0.1:0")
    bad = iotfsm("platform", *common, "--api", "nowhere")
    assert bad.returncode == 1 and "--api 'nowhere' must be HOST:PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = iotfsm("platform", *common, "--api", f"127.0.0.1:{port}")
    assert busy.returncode == 1, busy.stderr
    assert f"cannot serve the API on 127.0.0.1:{port}" in busy.stderr

    platform = Platform(*common, "--api", "127.0.0.1:0", "--events", "jsonl")
    try:
        wait_for(
            "the platform to start",
            lambda: any(e["event"] == "started" for e in platform.events),
            30,
        )
        started = next(e for e in platform.events if e["event"] == "started")
        base = f"http://{started['api']}/api/v1"
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/devices").status_code == 401
        made_device = httpx.post(
            f"{base}/devices", json={"product": "CLI0000001", "device": "dev-1"}, headers=auth
        )
        assert made_device.status_code == 201, made_device.text
        assert httpx.get(f"{base}/devices", headers=auth).json()["total"] == 1
        spec = httpx.get(f"{base}/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/api/v1/devices" in spec["paths"]

        revoked = iotfsm("api-token", "revoke", "--data-dir", str(data), "--name", "ci")
        assert revoked.returncode == 0, revoked.stderr
        wait_for(
            "the revocation to count",
            lambda: httpx.get(f"{base}/devices", headers=auth).status_code == 401,
            10,
        )
    finally:
        log = platform.stop()
    assert platform.proc.returncode == 0, log
    assert token not in log
    assert token.encode() not in (data / "platform.sqlite3").read_bytes()
