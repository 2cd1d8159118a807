"""A device's state directory when it fills up or holds a damaged file (issue 16, points 2 and 7).

A download that meets a full disk must not keep the partial (it keeps the disk full, and every
later write fails too); a config that cannot be saved must not be applied (the application would
run a config the device forgets at its next reboot); a damaged `ota/version.json` must not make
the device report its start-up version silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from tmpfs_fixtures import TmpfsFactory, fill, small_tmpfs

from iotfsm import Device
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.testing import Pair

__all__ = ["small_tmpfs"]

IMAGE = os.urandom(3 * 1024 * 1024)


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_download_that_fills_the_state_dir_reports_fail_and_removes_its_partial(
    tmp_path: Path, small_tmpfs: TmpfsFactory
) -> None:
    state_dir = small_tmpfs(1024 * 1024)
    applied: list[dict[str, Any]] = []
    with Pair(tmp_path) as pair:
        pair.platform.register_device(pair.product, "dev-1")
        device = Device(
            pair.product,
            "dev-1",
            broker=pair.broker,
            state_dir=state_dir,
            version="1.0",
            clock=pair.clock,
            on_config=applied.append,
        )
        pair.devices.append(device)
        device.start()
        pair.settle()
        empty = _free(state_dir)
        pair.platform.deploy_firmware(pair.product, ["dev-1"], "2.0", IMAGE)

        def failed() -> bool:
            reports = pair.wire("$ota/report")
            return any(r["report"].get("progress", {}).get("state") == "fail" for r in reports)

        pair.wait_for("the device to report fail", failed)
        pair.wait_for("the transfer to end", lambda: not device.busy)
        pair.settle()
        assert pair.platform.firmware_status(pair.product, "dev-1").result_code == -1
        left = sorted(p.name for p in (state_dir / "ota").rglob("*") if p.is_file())
        assert left == [], left
        assert _free(state_dir) >= empty  # the room came back


def test_a_config_that_cannot_be_saved_is_not_applied_and_is_applied_once_it_can(
    tmp_path: Path, small_tmpfs: TmpfsFactory
) -> None:
    state_dir = small_tmpfs(256 * 1024)
    applied: list[dict[str, Any]] = []
    with Pair(tmp_path) as pair:
        pair.platform.register_device(pair.product, "dev-1")
        device = Device(
            pair.product,
            "dev-1",
            broker=pair.broker,
            state_dir=state_dir,
            clock=pair.clock,
            on_config=applied.append,
        )
        pair.devices.append(device)
        device.start()
        pair.settle()
        filler = fill(state_dir)
        pair.platform.set_config(pair.product, {"rate": 5})
        pair.settle()
        assert applied == []
        assert device.config is None
        assert "could not save" in device.config_status.text
        assert sorted(p.name for p in (state_dir / "config").glob("*")) == []
        filler.unlink()
        device.request_config()
        pair.settle()
        assert applied == [{"rate": 5}]
        assert device.config == {"rate": 5}
        assert (state_dir / "config" / "config.json").read_text() == '{"payload":{"rate":5}}'


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": ""}', b'["2.0"]', b"\xff\xfe", b'{"version": 7}']
)
def test_a_damaged_version_file_is_reported_not_silently_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / "ota").mkdir()
    path = tmp_path / "ota" / "version.json"
    path.write_bytes(content)
    caplog.set_level(logging.WARNING)
    device = Device("PVERSION01", "d", broker=MemoryBroker(), state_dir=tmp_path, version="1.0")
    assert device.version == "1.0"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "reporting version '1.0'" in lines[0]


def test_a_good_or_missing_version_file_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fresh = Device("PVERSION01", "d", broker=MemoryBroker(), state_dir=tmp_path / "a", version="1")
    assert fresh.version == "1"
    (tmp_path / "b" / "ota").mkdir(parents=True)
    (tmp_path / "b" / "ota" / "version.json").write_text('{"version": "2.5"}')
    adopted = Device(
        "PVERSION01", "d", broker=MemoryBroker(), state_dir=tmp_path / "b", version="1"
    )
    assert adopted.version == "2.5"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
