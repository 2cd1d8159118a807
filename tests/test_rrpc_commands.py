"""`iotfsm device --rrpc-commands`: RRPC answered by commands named in a file, never by anything
taken from the call; the file's checks; the agent end to end over a real Mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mqtt_fixtures import mosquitto_broker

from iotfsm import DeviceKey
from iotfsm.adapters.connect import MqttOptions
from iotfsm.commands.common import CommandError
from iotfsm.commands.rrpc_commands import RrpcCommands, load_commands
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.pair import Pair
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

PY = sys.executable


def commands_file(tmp_path: Path, doc: Any, mode: int = 0o600) -> Path:
    path = tmp_path / "rrpc-commands.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    path.chmod(mode)
    return path


def test_the_file_names_every_command_and_bad_files_say_what_to_fix(tmp_path: Path) -> None:
    good = {"hello": [PY, "-c", "print('hi')"], "disk.usage": ["df", "-h", "/"]}
    assert load_commands(commands_file(tmp_path, good)) == good
    bad: list[tuple[Any, int, str]] = [
        (good, 0o622, "writable by group or others"),
        (good, 0o660, "writable by group or others"),
        ("{not json", 0o600, "not JSON"),
        ([["a"]], 0o600, "JSON object"),
        ({}, 0o600, "JSON object"),
        ({"a b": ["x"]}, 0o600, "must be 1-64"),
        ({"../x": ["x"]}, 0o600, "must be 1-64"),
        ({"x": "rm -rf /"}, 0o600, "list of 1-64 non-empty strings"),
        ({"x": []}, 0o600, "list of 1-64"),
        ({"x": ["ls", ""]}, 0o600, "list of 1-64"),
        ({"x": ["ls", 3]}, 0o600, "list of 1-64"),
        ({"x": ["ls\0"]}, 0o600, "list of 1-64"),
    ]
    for doc, mode, message in bad:
        with pytest.raises(CommandError, match=message):
            load_commands(commands_file(tmp_path, doc, mode))
    with pytest.raises(CommandError, match="No such file"):
        load_commands(tmp_path / "missing.json")


def test_calls_run_only_the_named_commands_and_bad_requests_run_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFSM_PSK", "the-device-key")
    monkeypatch.setenv("IOTFSM_TEST_VISIBLE", "yes")
    marker = tmp_path / "ran"
    commands = {
        "hello": [PY, "-c", "import sys; print('hi'); print('warn', file=sys.stderr)"],
        "touch": [PY, "-c", f"open({str(marker)!r}, 'a').write('x')"],
        "fails": [PY, "-c", "raise SystemExit(3)"],
        "slow": [PY, "-c", "import time; time.sleep(30)"],
        "env": [
            PY,
            "-c",
            "import os; e = os.environ; print(e.get('IOTFSM_PSK', 'none'),"
            " e.get('IOTFSM_TEST_VISIBLE'))",
        ],
        "missing": [str(tmp_path / "no-such-program")],
        "noisy": [PY, "-c", "print('\\x01' * 50000)"],
    }
    runner = RrpcCommands(commands, timeout=1.0)
    with Pair(tmp_path / "pair") as pair:
        device = pair.device("dev-1", on_rrpc=runner).start()
        runner.answer = device.answer_rrpc
        key = DeviceKey(pair.product, "dev-1")

        def call(payload: bytes) -> dict[str, Any]:
            future = pair.platform.call_async(key, payload, timeout=30)
            pair.wait_for("the answer", future.done)
            answer: dict[str, Any] = json.loads(future.result())
            return answer

        assert call(b'{"command":"hello"}') == {
            "command": "hello",
            "exit_code": 0,
            "stdout": "hi\n",
            "stderr": "warn\n",
        }
        assert call(b'{"command":"fails"}')["exit_code"] == 3
        assert call(b'{"command":"slow"}') == {"command": "slow", "error": "timed out after 1 s"}
        assert call(b'{"command":"missing"}')["error"].startswith("cannot run")
        assert call(b'{"command":"env"}')["stdout"] == "none yes\n"  # without the agent's key
        noisy = pair.platform.call_async(key, b'{"command":"noisy"}', timeout=30)
        pair.wait_for("the noisy answer", noisy.done)
        assert len(noisy.result()) <= 16 * 1024 and json.loads(noisy.result())["exit_code"] == 0
        refused = [
            b"touch",  # not JSON
            b'{"command":"touch; rm -rf /"}',  # no such name: nothing is parsed out of it
            b'{"command":"touch","args":["-rf"]}',  # more than a name
            b'{"command":["touch"]}',
            b'["touch"]',
            b"\xff\xfe",
            b'{"command":"__class__"}',
        ]
        for payload in refused:
            answer = call(payload)
            assert list(answer) == ["error"], payload
            assert "touch" in answer["error"]  # the known names, so a person can fix the call
        assert not marker.exists()
        assert call(b'{"command":"touch"}') == {
            "command": "touch",
            "exit_code": 0,
            "stdout": "",
            "stderr": "",
        }
        assert marker.read_text() == "x"
    runner.close()


def test_the_device_agent_answers_rrpc_over_mosquitto(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    platform = Platform(mosquitto_broker.url, mqtt=MqttOptions(backoff_min=0.05)).start()
    psk = "vX6PQqazsGsMyf5SMfs6OA6y"
    platform.register_device("AGENT00001", "dev-1", psk)
    commands = commands_file(tmp_path, {"version": [PY, "-c", "print('agent 1.0')"]})
    (tmp_path / "psk").write_text(psk)
    (tmp_path / "psk").chmod(0o600)
    agent = subprocess.Popen(
        [PY, "-m", "iotfsm", "device", "--broker", mosquitto_broker.url,
         "--product-id", "AGENT00001", "--device-name", "dev-1", "--psk-file",
         str(tmp_path / "psk"), "--version", "1.0", "--state-dir", str(tmp_path / "dev"),
         "--rrpc-commands", str(commands)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        key = DeviceKey("AGENT00001", "dev-1")
        wait_for(  # its first ask follows its subscriptions on the same connection
            "the agent to ask for its log level",
            lambda: key in platform.runtime.sessions["log_level"],
            timeout=30,
        )
        answer = json.loads(platform.call(key, b'{"command":"version"}', timeout=10))
        assert answer == {
            "command": "version",
            "exit_code": 0,
            "stdout": "agent 1.0\n",
            "stderr": "",
        }
        assert "error" in json.loads(platform.call(key, b'{"command":"reboot"}', timeout=10))
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        platform.stop()
    assert agent.returncode == 0, err
