"""Every command fails with one clear line, a non-zero exit and no traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotfsm.testing.server import free_port

PSK = "vX6PQqazsGsMyf5SMfs6OA6y"


def iotfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfsm", *args],
        env={**os.environ, "IOTFSM_PSK": PSK},  # the device key, kept out of argv
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def device_args(tmp_path: Path, broker: str, product: str = "P1", device: str = "d1") -> list[str]:
    return [
        "device",
        "--broker",
        broker,
        "--product-id",
        product,
        "--device-name",
        device,
        "--version",
        "1.0",
        "--state-dir",
        str(tmp_path / "d"),
        "--connect-timeout",
        "1",
    ]


def platform_args(tmp_path: Path, broker: str, *extra: str) -> list[str]:
    return [
        "platform",
        "--broker",
        broker,
        "--data-dir",
        str(tmp_path / "p"),
        "--http",
        "127.0.0.1:0",
        "--connect-timeout",
        "1",
        *extra,
    ]


def one_line_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("iotfsm: ") and text in lines[0], lines[0]


@pytest.fixture
def dead_broker() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


def test_device_broker_unreachable(tmp_path: Path, dead_broker: str) -> None:
    one_line_error(iotfsm(*device_args(tmp_path, dead_broker)), "cannot reach the broker")


def test_platform_broker_unreachable(tmp_path: Path, dead_broker: str) -> None:
    one_line_error(iotfsm(*platform_args(tmp_path, dead_broker)), "cannot reach the broker")


def test_bad_product_and_device_names(tmp_path: Path, dead_broker: str) -> None:
    one_line_error(iotfsm(*device_args(tmp_path, dead_broker, product="P-1")), "product id 'P-1'")
    one_line_error(iotfsm(*device_args(tmp_path, dead_broker, device="../x")), "device name '../x'")


def test_missing_files(tmp_path: Path, dead_broker: str) -> None:
    one_line_error(
        iotfsm(*platform_args(tmp_path, dead_broker, "--desired", str(tmp_path / "nope.toml"))),
        "no such file",
    )
    one_line_error(
        iotfsm(*device_args(tmp_path, dead_broker), "--tls-ca", str(tmp_path / "ca.pem")),
        "no such file",
    )
    one_line_error(
        iotfsm("status", "--data-dir", str(tmp_path / "empty")), "holds no platform store"
    )


def test_malformed_and_invalid_desired_files(tmp_path: Path, dead_broker: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[firmware]\n")
    one_line_error(
        iotfsm(*platform_args(tmp_path, dead_broker, "--desired", str(bad))), "not valid TOML"
    )
    bad.write_text('[[log_level]]\nproduct = "P1"\ndevices = ["*"]\nlevel = 9\n')
    one_line_error(
        iotfsm(*platform_args(tmp_path, dead_broker, "--desired", str(bad))), "level 9 must be 0"
    )


def test_bad_broker_url_and_http_address(tmp_path: Path) -> None:
    one_line_error(iotfsm(*device_args(tmp_path, "http://example")), "unsupported broker URL")
    args = platform_args(tmp_path, "mqtt://127.0.0.1:1")
    args[args.index("127.0.0.1:0")] = "nowhere"
    one_line_error(iotfsm(*args), "must be HOST:PORT")


def test_every_command_has_help_with_an_example() -> None:
    for command in ("demo", "device", "platform", "status", "diagram"):
        done = iotfsm(command, "--help")
        assert done.returncode == 0 and "xample" in done.stdout, command


@pytest.mark.parametrize("entry", ["iotfsm.pool", "=debug", "iotfsm.pool=loud"])
def test_a_malformed_logger_level_is_a_usage_error(entry: str) -> None:
    result = iotfsm("--log", entry, "status", "--data-dir", "/nonexistent")
    assert result.returncode == 2
    assert "is not LOGGER=LEVEL" in result.stderr and "Traceback" not in result.stderr


def test_one_logger_can_be_louder_than_the_rest() -> None:
    from iotfsm.cli import build_parser

    args = build_parser().parse_args(
        ["--log", "iotfsm.pool.deliveries=debug", "--log", "x=WARNING", "status", "--data-dir", "d"]
    )
    assert args.log == [("iotfsm.pool.deliveries", logging.DEBUG), ("x", logging.WARNING)]
