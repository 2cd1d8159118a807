"""Maintenance windows through the platform (issue 18), on the manual clock: nobody starts
outside a daily window; and the burn rule end to end: a campaign with `burn="wait"` starts a
device inside its window; the device, online only after the window closed, downloads at once,
holds the image, keeps the platform from taking it for silent, and burns when the next window
opens. Real device and platform over the memory broker, firmware over real HTTP."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from iotfsm.campaigns import CampaignSettings
from iotfsm.machines.campaign import Rate
from iotfsm.machines.windows import DailyWindow, Interval
from iotfsm.testing import Pair

PRODUCT = "CAMP000005"
IMAGE = random.Random(5).randbytes(12_000)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, product=PRODUCT)
    yield p
    p.close()


@pytest.mark.parametrize("burn", ["wait", "allow"])
def test_a_device_burns_only_inside_a_window_when_told_to_wait(pair: Pair, burn: str) -> None:
    t = pair.clock.now()
    windows = (Interval(t, t + 60), Interval(t + 3600, t + 3660))
    burned: list[float] = []
    device = pair.device(
        "dev-0", version="1.0", burn=lambda image, v: burned.append(pair.clock.now())
    )
    settings = CampaignSettings(intervals=windows, burn=burn)
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [["dev-0"]], settings=settings)
    runs = pair.platform.campaigns.context(cid).devices
    pair.run_until("the start", lambda: runs["dev-0"].starts == 1)
    assert runs["dev-0"].started == t
    pair.advance(120)  # the device comes online after the window closed
    device.start()
    if burn == "allow":
        pair.run_until("the update", lambda: device.version == "2.0")
        assert burned == [t + 120]
        offer = [d for d in pair.wire("$ota/update") if d["type"] == "update_firmware"][-1]
        assert "burn_windows" not in offer
        return
    pair.run_until("the image held", lambda: device.state("ota") == "holding")
    offer = [d for d in pair.wire("$ota/update") if d["type"] == "update_firmware"][-1]
    assert offer["burn_windows"] == [[int(t + 3600), int(t + 3660)]]
    pair.run_until("the update", lambda: device.version == "2.0", timeout=60)
    assert len(burned) == 1 and t + 3600 <= burned[0] < t + 3660
    # the wait was not silence: one offer since the device came online, no failed attempt
    status = pair.platform.firmware_status(PRODUCT, "dev-0")
    assert status.state == "succeeded" and status.result_code == 0
    assert pair.platform.campaign_status(cid).state == "succeeded"
    held = [d for d in pair.wire("$ota/report") if d.get("report", {}).get("progress")]
    assert not [d for d in held if d["report"]["progress"]["state"] == "fail"]


def test_through_the_platform_nobody_starts_outside_a_daily_window(pair: Pair) -> None:
    """A 10-minute nightly window, 1 start a minute, 15 devices: 10 start tonight, 5 the next
    night, each inside a window, on the recorded start times of the manual clock."""
    names = [f"dev-{i:02d}" for i in range(15)]
    for n in names:
        pair.platform.register_device(PRODUCT, n)
    t = pair.clock.now()
    opens = datetime.fromtimestamp(t + 3600, timezone.utc).strftime("%H:%M")
    closes = datetime.fromtimestamp(t + 3600 + 600, timezone.utc).strftime("%H:%M")
    window = DailyWindow(opens, closes, "UTC")
    settings = CampaignSettings(rate=Rate(1), daily_windows=(window,), advance="immediate")
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [names], settings=settings)
    runs = pair.platform.campaigns.context(cid).devices
    pair.run_until("every start", lambda: all(r.starts for r in runs.values()), timeout=60)
    at = sorted(r.started for r in runs.values())
    first = t + 3600 - (t + 3600) % 60  # HH:MM: the window opens on the minute
    assert [a - first for a in at] == [*range(0, 600, 60), *range(86400, 86400 + 300, 60)]
