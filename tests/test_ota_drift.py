"""A device that leaves its target after success (issue 16, point 8): the task stays active until
it is cancelled, so the platform offers the target again and says the device drifted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from iotfsm.fsm import CancelTimer, Log, Publish, SetTimer, Stepper
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.ota import (
    PLATFORM,
    CancelFirmware,
    DeployFirmware,
    OfferFirmware,
    OtaFinished,
    ReportProgress,
    ReportVersion,
    ReportVersionRsp,
)
from iotfsm.testing import Pair

KEY = DeviceKey("P1", "dev-1")
MD5_A = "0123456789abcdef0123456789abcdef"
TASK = DeployFirmware("0.2", "fw-0.2", 1000, MD5_A)


def succeeded() -> Stepper:
    s = Stepper(PLATFORM, key=KEY)
    s.step(ReportVersion.of("0.1"))
    s.step(TASK)
    s.step(ReportProgress.done("0.2"))
    s.step(ReportVersion.of("0.2"))
    assert s.state == "succeeded"
    return s


def test_a_device_reporting_another_version_after_success_is_offered_the_target_again() -> None:
    s = succeeded()
    assert s.step(ReportVersion.of("0.2")) == [Publish(ReportVersionRsp(0, "success", "0.2"), 0)]
    assert s.step(ReportVersion.of("0.1")) == [
        Publish(ReportVersionRsp(0, "success", "0.1"), 0),
        Log.warning(
            "reports 0.1 after it reached its target 0.2 (flashed back, or a late report): "
            "offering 0.2 again"
        ),
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 3),
    ]
    assert (s.state, s.ctx.drift, s.ctx.reported, s.ctx.percent) == ("offered", "0.1", "0.1", 0)
    # it follows the new attempt to the end like any other, and the drift is over
    s.step(ReportProgress.done("0.2"))
    assert s.step(ReportVersion.of("0.2")) == [
        CancelTimer("silence"),
        Publish(ReportVersionRsp(0, "success", "0.2"), 0),
        OtaFinished(True, "0.2", 0, "success"),
    ]
    assert (s.state, s.ctx.drift) == ("succeeded", "")


def test_a_late_report_of_the_old_version_ends_in_the_same_single_success() -> None:
    s = succeeded()
    s.step(ReportVersion.of("0.1"))  # delayed past the success: looks like drift
    assert s.state == "offered"
    # the device, running 0.2, answers the re-offer with its version at once
    assert s.step(ReportVersion.of("0.2")) == [
        CancelTimer("silence"),
        Publish(ReportVersionRsp(0, "success", "0.2"), 0),
        Log.info("reports its target 0.2 again: no drift"),
    ]
    assert (s.state, s.ctx.drift, s.ctx.percent) == ("succeeded", "", 100)


def test_a_cancelled_task_does_not_chase_the_device_and_bad_versions_change_nothing() -> None:
    s = succeeded()
    assert s.step(ReportVersion.of("y" * 33)) == [
        Log.warning(
            "ignored report_version 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy': not 1-32 characters"
        )
    ]
    assert (s.state, s.ctx.drift) == ("succeeded", "")
    s.step(CancelFirmware())
    assert s.step(ReportVersion.of("0.1")) == [Publish(ReportVersionRsp(0, "success", "0.1"), 0)]
    assert (s.state, s.ctx.drift) == ("idle", "")


def test_drift_shows_in_firmware_status_and_iotfsm_status(tmp_path: Path) -> None:
    with Pair(tmp_path) as pair:
        device = pair.device("dev-1", version="1.0").start()
        pair.platform.deploy_firmware(pair.product, ["dev-1"], "2.0", b"firmware 2.0" * 100)
        pair.wait_for("the device to run 2.0", lambda: device.version == "2.0")
        pair.settle()
        assert pair.platform.firmware_status(pair.product, "dev-1").state == "succeeded"
        device.stop()
        # the device is flashed back to 1.0 by hand and comes back
        (tmp_path / "devices" / "dev-1" / "ota" / "version.json").unlink()
        release = threading.Event()

        def burn(image: Path, version: str) -> None:
            assert release.wait(30), "the test never released the burn"

        again = pair.device("dev-1", version="1.0", burn=burn)
        again.start()
        pair.wait_for(
            "the drift to be seen",
            lambda: pair.platform.firmware_status(pair.product, "dev-1").drift == "1.0",
        )
        pair.settle()
        status = pair.platform.firmware_status(pair.product, "dev-1")
        assert (status.drift, status.target, status.reported) == ("1.0", "2.0", "1.0")
        rows = subprocess.run(
            [
                sys.executable,
                "-m",
                "iotfsm",
                "status",
                "--data-dir",
                str(tmp_path / "platform"),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        ota_row = [r for r in json.loads(rows.stdout) if r["feature"] == "ota"]
        assert [(r["drift"], r["target"], r["version"]) for r in ota_row] == [("1.0", "2.0", "1.0")]
        release.set()
        pair.wait_for("the device to run 2.0 again", lambda: again.version == "2.0")
        pair.wait_for(
            "the drift to end",
            lambda: pair.platform.firmware_status(pair.product, "dev-1").drift == "",
        )
