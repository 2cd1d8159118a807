"""The burn rule on the device (issue 18): an offer naming `burn_windows` is downloaded at once
but burned only inside one, stepped by hand on the manual clock with every effect exact."""

from __future__ import annotations

import json

import pytest

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.fsm import CancelTimer, Log, Publish, SetTimer, Stepper
from iotfsm.machines import ota
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.ota import (
    DEVICE,
    BurnDone,
    BurnFirmware,
    FirmwareVerified,
    ReportProgress,
    ReportVersion,
    UpdateFirmware,
)
from iotfsm.machines.transfer import StartDownload, TransferDone
from iotfsm.machines.windows import DailyWindow, Interval, Windows

KEY = DeviceKey("P1", "dev-1")
MD5 = "0123456789abcdef0123456789abcdef"
URL = "http://files/fw?sig=x"
T0 = 1_800_000_000
IMAGE = "/state/fw-0.2.bin"


def holding(windows: tuple[tuple[int, int], ...], at: float = T0) -> Stepper:
    """A device at `at` that has downloaded 0.2, offered with these burn windows."""
    s = Stepper(DEVICE, key=KEY, start=at)
    s.session.state, s.ctx.version = "idle", "0.1"
    s.step(UpdateFirmware(1000, MD5, URL, "0.2", burn_windows=windows))
    assert s.ctx.burn_windows == windows
    return s


def test_inside_a_window_the_ready_image_is_burned_at_once() -> None:
    s = holding(((T0 - 10, T0 + 600),))
    assert s.step(TransferDone(1, IMAGE)) == [CancelTimer("stall"), SetTimer("burn", 0.0, 2)]
    assert s.state == "holding"
    assert s.advance(0) == [
        Publish(ReportProgress.burning("0.2"), 1),
        BurnFirmware(IMAGE, "0.2"),
    ]
    assert s.state == "burning" and s.ctx.image == ""
    s.step(BurnDone(True))
    assert s.state == "idle" and s.ctx.version == "0.2"


def test_outside_the_window_nobody_burns_until_it_opens() -> None:
    opens = T0 + 300
    s = holding(((opens, opens + 600),))
    assert s.step(TransferDone(1, IMAGE)) == [CancelTimer("stall"), SetTimer("window", 120.0, 2)]
    # the wait repeats 100 %, so the platform does not take it for silence, and never burns
    hundred = Publish(ReportProgress.downloading("0.2", 100), 0)
    assert s.advance(120) == [hundred, SetTimer("window", 120.0, 3)]
    assert s.advance(120) == [hundred, SetTimer("window", 60.0, 4)]
    assert s.advance(59.9) == [] and s.state == "holding"
    burned = s.advance(0.1)
    assert burned == [hundred, SetTimer("burn", 0.0, 5), *burned[2:]]
    assert burned[2:] == [Publish(ReportProgress.burning("0.2"), 1), BurnFirmware(IMAGE, "0.2")]
    assert s.state == "burning" and s.clock.now() == opens


def test_a_verified_image_waits_the_same_way() -> None:
    s = holding(((T0 + 60, T0 + 120),))
    s.ctx.signed_only = True
    s.step(TransferDone(1, IMAGE))
    assert s.state == "verifying"
    assert s.step(FirmwareVerified(IMAGE)) == [SetTimer("window", 60.0, 2)]
    assert s.state == "holding"
    s.advance(60)
    assert s.state == "burning"


def test_an_image_ready_after_its_last_window_fails_the_attempt_and_keeps_the_version() -> None:
    s = holding(((T0 - 600, T0 - 10),))
    s.step(TransferDone(1, IMAGE))
    assert s.advance(0) == [
        Publish(ReportProgress.fail("0.2", -1, "no burn window left"), 1),
        Log.warning("firmware 0.2 is ready but its last burn window has passed"),
        SetTimer("retry", 10.0, 3),
    ]
    assert s.state == "idle" and s.ctx.version == "0.1" and s.ctx.target == ""
    assert s.advance(10)[0] == Publish(ReportVersion.of("0.1"), 1)


def test_offers_while_holding() -> None:
    windows = ((T0 + 300, T0 + 900),)
    s = holding(windows)
    s.step(TransferDone(1, IMAGE))
    # the same offer again changes nothing; new windows restart the (resuming) download
    assert s.step(UpdateFirmware(1000, MD5, URL, "0.2", burn_windows=windows)) == []
    out = s.step(UpdateFirmware(1000, MD5, URL, "0.2", burn_windows=((T0, T0 + 900),)))
    assert StartDownload(2, URL, 1000, MD5, "0.2", "firmware") in out
    assert s.state == "downloading" and s.ctx.image == ""
    s.step(TransferDone(2, IMAGE))
    s.advance(0)
    assert s.state == "burning"


@pytest.mark.parametrize(
    "windows", [(), ((T0, T0),), ((T0 + 1, T0),), tuple((T0, T0 + 1) for _ in range(17))]
)
def test_malformed_burn_windows_refuse_the_offer(windows: tuple[tuple[int, int], ...]) -> None:
    s = Stepper(DEVICE, key=KEY, start=T0)
    s.session.state = "idle"
    [refused] = s.step(UpdateFirmware(1000, MD5, URL, "0.2", burn_windows=windows))
    assert isinstance(refused, Log) and "burn_windows must be 1-16" in refused.text
    assert s.state == "idle" and s.ctx.target == ""


def test_the_wire_form_and_a_tencent_offer_without_it() -> None:
    codec = Codec([ota.FEATURE])
    offer = UpdateFirmware(1000, MD5, URL, "0.2", burn_windows=((T0, T0 + 3600),))
    doc = json.loads(codec.encode(offer))
    assert list(doc) == ["type", "file_size", "md5sum", "url", "version", "burn_windows"]
    assert doc["burn_windows"] == [[T0, T0 + 3600]]
    assert codec.decode("ota", "down", codec.encode(offer)) == offer
    plain = json.loads(codec.encode(UpdateFirmware(1000, MD5, URL, "0.2")))
    assert "burn_windows" not in plain
    for bad in ('"soon"', "[[1.5, 2]]", "[[1, 2, 3]]"):
        payload = json.dumps(plain)[:-1] + f', "burn_windows": {bad}}}'
        with pytest.raises(DecodeError, match="burn_windows"):
            codec.decode("ota", "down", payload.encode())


def test_the_platform_names_the_open_and_coming_windows_per_offer() -> None:
    night = Windows((DailyWindow("02:00", "04:00", "UTC"),))
    day = 86400
    midnight = T0 - T0 % day
    windows = ota.burn_windows_at(night, midnight + 3 * 3600)  # 03:00: tonight's is open
    assert windows is not None and len(windows) == 8
    assert windows[0] == (midnight + 2 * 3600, midnight + 4 * 3600)
    assert windows[1] == (midnight + day + 2 * 3600, midnight + day + 4 * 3600)
    assert ota.burn_windows_at(Windows(), T0) is None
    once = Windows(intervals=(Interval(T0, T0 + 60),))
    assert ota.burn_windows_at(once, T0 - 1) == ((T0, T0 + 60),)
    assert ota.burn_windows_at(once, T0 + 60) is None
