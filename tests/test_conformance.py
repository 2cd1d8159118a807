"""`iotfsm conformance device` against `iotfsm device` over a real Mosquitto: every scenario
passes; against a device with a planted fault (it appends on a 200 after asking for a Range) the
Range scenario fails, by name, and the others still pass. `iotfsm conformance platform` likewise
against `iotfsm platform`, and against one that answers report_version with result 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotfsm.adapters.http import transfer as http_transfer
from iotfsm.cli import main
from iotfsm.commands.common import PSK_ENV
from iotfsm.testing import Mosquitto

PRODUCT = "CONFORM001"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
SCENARIOS = 10
WITH_KEY = {**os.environ, PSK_ENV: PSK}
"""The environment of a process logging in as the device: its key in $IOTFSM_PSK, not argv."""

DEVICE = """
import sys
from iotfsm.adapters.http import transfer as http_transfer
from iotfsm.cli import main
from iotfsm.commands.common import PSK_ENV
from iotfsm.machines import ota

# Two scenarios cut a download; the device reports its version again DEVICE_RETRY (10 s) after
# the failed attempt, and the platform re-offers. That wait checks nothing here: shorten it.
ota.DEVICE_RETRY = {retry}
if {fault}:
    # the fault: a 200 to a Range request is appended to the partial file instead of replacing it
    http_transfer.{cls}._restart = lambda self: None
sys.exit(main(sys.argv[1:]))
"""
RETRY = 0.5
"""Seconds the device under test waits before reporting again after a failed download."""


def _download_class() -> str:
    """The class whose `_restart` throws the partial away when a server ignores Range."""
    return next(
        name
        for name, value in vars(http_transfer).items()
        if isinstance(value, type) and "_restart" in vars(value)
    )


def _device(mosquitto: Mosquitto, state: Path, name: str, fault: bool) -> subprocess.Popen[str]:
    args = ["device", "--broker", mosquitto.url, "--product-id", PRODUCT, "--device-name", name]
    args += ["--version", "1.0", "--state-dir", str(state)]
    code = DEVICE.format(retry=RETRY, fault=fault, cls=_download_class())
    command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=WITH_KEY
    )


def _run(
    mosquitto: Mosquitto, tmp: Path, name: str, *, fault: bool, only: tuple[str, ...] = ()
) -> tuple[int, str]:
    args = ["--broker", mosquitto.url, "--product-id", PRODUCT, "--device-name", name]
    for scenario in only:
        args += ["--only", scenario]
    kit = subprocess.Popen(
        [sys.executable, "-m", "iotfsm", "conformance", "device", *args, "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert kit.stderr is not None
    ready = kit.stderr.readline()  # the kit is subscribed: now the device's first report counts
    assert "conformance kit ready" in ready, ready
    device = _device(mosquitto, tmp / name, name, fault)
    try:
        out, err = kit.communicate(timeout=900)
    finally:
        device.terminate()
        device.communicate(timeout=30)
    return kit.returncode, out + err[-3000:]


def test_iotfsm_device_passes_every_scenario(mosquitto: Mosquitto, tmp_path: Path) -> None:
    code, out = _run(mosquitto, tmp_path, "dev-good", fault=False)
    assert code == 0, out
    assert "all scenarios passed" in out
    assert out.count("  pass  ") == SCENARIOS, out


def test_a_device_that_appends_after_a_200_fails_that_scenario_by_name(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # the fault's scenario and its neighbours (the whole set runs against the good device)
    only = (
        "report_version answered",
        "ota cut download resumes with Range",
        "ota 200 to a Range request restarts",
        "ota wrong md5 reported -4",
    )
    code, out = _run(mosquitto, tmp_path, "dev-bad", fault=True, only=only)
    assert code == 1, out
    assert "FAILED: ota 200 to a Range request restarts\n" in out, out
    assert out.count("  pass  ") == len(only) - 1, out
    # under the failure, what the device said: the appended image failed its md5 check
    said = out.split("the device's last messages in it:\n", 1)[1].split("FAILED:")[0]
    assert f"< $ota/report/{PRODUCT}/dev-bad  " in said, out
    assert '"state":"fail","result_code":"-4"' in said, out


def test_a_bad_file_service_address_is_refused_with_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["conformance", "device", "--broker", "mqtt://127.0.0.1:1", "--product-id", PRODUCT]
    assert main([*argv, "--device-name", "d", "--http", "nope"]) == 1
    assert "--http 'nope' must be HOST:PORT" in capsys.readouterr().err


# ---- conformance platform: the kit plays a device ------------------------------------------


def test_the_device_key_comes_from_a_file_or_the_environment_never_argv(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PSK_ENV, raising=False)
    argv = ["conformance", "platform", "--broker", "mqtt://127.0.0.1:1", "--product-id", PRODUCT]
    assert main([*argv, "--device-name", "kit-1"]) == 1
    assert "no login: give --psk-file (or $IOTFSM_PSK)" in capsys.readouterr().err


NONZERO_RSP = """
import sys
from iotfsm.fsm import Publish
from iotfsm.machines import ota
from iotfsm.cli import main
from iotfsm.commands.common import PSK_ENV

# the fault: report_version answered with result 1 (the C SDK then ignores every offer)
def rsp(ctx, event):
    ctx.reported = event.report.version
    return Publish(ota.ReportVersionRsp(1, "refused", event.report.version), 0)

ota._rsp = rsp
sys.exit(main(sys.argv[1:]))
"""


def _platform(mosquitto: Mosquitto, tmp: Path, *, fault: bool) -> subprocess.Popen[str]:
    args = ["platform", "--broker", mosquitto.url, "--data-dir", str(tmp / "platform")]
    args += ["--http", "127.0.0.1:0", "--events", "jsonl"]
    head = [sys.executable, "-c", NONZERO_RSP] if fault else [sys.executable, "-m", "iotfsm"]
    registered = subprocess.run(
        [sys.executable, "-m", "iotfsm", "registry", "add", "--data-dir", str(tmp / "platform"),
         "--product-id", PRODUCT, "--device-name", "kit-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    proc = subprocess.Popen(
        [*head, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    started = proc.stdout.readline()  # {"event": "started", ...} once connected
    assert '"started"' in started, started + (proc.stderr.read() if proc.stderr else "")
    return proc


def _kit_against_platform(mosquitto: Mosquitto, tmp: Path, *, fault: bool) -> tuple[int, str]:
    platform = _platform(mosquitto, tmp, fault=fault)
    args = ["--broker", mosquitto.url, "--product-id", PRODUCT, "--device-name", "kit-1"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "iotfsm", "conformance", "platform", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=WITH_KEY,  # the device key never in argv
        )
    finally:
        platform.terminate()
        platform.communicate(timeout=30)
    return done.returncode, done.stdout + done.stderr[-3000:]


def test_iotfsm_platform_passes_every_device_side_scenario(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    code, out = _kit_against_platform(mosquitto, tmp_path, fault=False)
    assert code == 0, out
    assert out.count("  pass  ") == 5, out


def test_a_platform_answering_report_version_non_zero_fails_that_scenario(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    code, out = _kit_against_platform(mosquitto, tmp_path, fault=True)
    assert code == 1, out
    assert "FAILED: report_version answered 0\n" in out, out
    assert "the C SDK ignores every later offer" in out
    assert out.count("  pass  ") == 4, out
