"""Campaigns through `Platform`: real devices over the memory broker, firmware over real HTTP, the
manual clock driven by `Pair.run_until`. Rates on the recorded start times, waves in order, an abort
by -5 burn failures, pause, operator errors, and a restart that continues without double starts."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfsm.campaigns import CampaignSettings
from iotfsm.device import Device
from iotfsm.fsm.events import Event
from iotfsm.machines import DeviceKey
from iotfsm.machines.campaign import AbortRule, CampaignError, Rate
from iotfsm.platform import Platform
from iotfsm.testing import Pair

PRODUCT = "CAMP000001"
IMAGE = random.Random(18).randbytes(20_000)
NAMES = [f"dev-{i}" for i in range(6)]
WAVES = [NAMES[0:2], NAMES[2:4], NAMES[4:6]]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, product=PRODUCT)
    yield p
    p.close()


def broken_burn(image: Path, version: str) -> None:
    raise RuntimeError("flash write error")


def fleet(pair: Pair, failing: frozenset[str] = frozenset()) -> dict[str, Device]:
    return {
        n: pair.device(n, version="1.0", burn=broken_burn if n in failing else None).start()
        for n in NAMES
    }


def starts(pair: Pair, cid: str) -> dict[str, float]:
    runs = pair.platform.campaigns.context(cid).devices
    return {d: r.started for d, r in runs.items() if r.starts}


def test_three_waves_at_a_rate_in_order(pair: Pair) -> None:
    devices = fleet(pair)
    settings = CampaignSettings(rate=Rate(2))
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, WAVES, settings=settings)
    pair.run_until(
        "the campaign to succeed", lambda: pair.platform.campaign_status(cid).state == "succeeded"
    )
    assert {d.version for d in devices.values()} == {"2.0"}
    status = pair.platform.campaign_status(cid)
    assert [(w.size, w.succeeded) for w in status.waves] == [(2, 2), (2, 2), (2, 2)]
    at = starts(pair, cid)
    times = sorted(at.values())
    assert all(b - a >= 30.0 for a, b in itertools.pairwise(times))  # 2 per minute
    for earlier, later in itertools.pairwise(WAVES):
        assert max(at[d] for d in earlier) < min(at[d] for d in later)
    assert all(r.starts == 1 for r in pair.platform.campaigns.context(cid).devices.values())
    assert [t for _, t in status.history][-1] == "succeeded: 6 of 6 devices succeeded"


def test_burn_failures_in_wave_two_abort_and_wave_three_never_starts(pair: Pair) -> None:
    fleet(pair, failing=frozenset(WAVES[1]))
    rule = AbortRule(25, min_finished=3, codes=(-4, -5))
    settings = CampaignSettings(abort=(rule,), success_percent=50)
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, WAVES, settings=settings)
    pair.run_until("the abort", lambda: pair.platform.campaign_status(cid).state == "aborted")
    status = pair.platform.campaign_status(cid)
    assert "with codes [-4, -5]" in status.reason
    assert [w.succeeded for w in status.waves] == [2, 0, 0]
    assert status.waves[1].failed >= 1
    assert status.waves[2].pending == 2
    for name in WAVES[2]:
        assert pair.platform.firmware_status(PRODUCT, name).target == ""
    with pytest.raises(CampaignError, match="cannot pause campaign"):
        pair.platform.pause_campaign(cid)


def test_a_paused_campaign_starts_nobody_until_resumed(pair: Pair) -> None:
    fleet(pair)
    settings = CampaignSettings(rate=Rate(1), advance="immediate")
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES], settings=settings)
    pair.run_until("two starts", lambda: len(starts(pair, cid)) == 2)
    pair.platform.pause_campaign(cid)
    started = starts(pair, cid)
    # the two started finish while paused (virtual time runs on), then an hour more passes
    pair.run_until(
        "the started devices to finish",
        lambda: pair.platform.campaign_status(cid).waves[0].succeeded == 2,
    )
    pair.run_until("quiet", pair.quiet)
    pair.advance(3600)
    pair.run_until("quiet", pair.quiet)
    assert starts(pair, cid) == started
    assert pair.platform.campaign_status(cid).state == "paused"
    resumed_at = pair.clock.now()
    pair.platform.resume_campaign(cid)
    pair.run_until(
        "the campaign to succeed", lambda: pair.platform.campaign_status(cid).state == "succeeded"
    )
    later = sorted(t for d, t in starts(pair, cid).items() if d not in started)
    assert later[0] == resumed_at and len(later) == 4


def test_operator_errors_are_typed_and_change_nothing(pair: Pair) -> None:
    fleet(pair)
    with pytest.raises(Exception, match="not registered"):
        pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [["nobody"]])
    with pytest.raises(CampaignError, match="more than one wave"):
        pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES[:2], NAMES[:1]])
    with pytest.raises(CampaignError, match="1-32 characters"):
        pair.platform.start_campaign(PRODUCT, "", IMAGE, [NAMES])
    assert pair.platform.campaigns.ids() == []
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES], campaign_id="c-1")
    with pytest.raises(CampaignError, match="exists"):
        pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES], campaign_id="c-1")
    with pytest.raises(CampaignError, match="no campaign 'c-2'"):
        pair.platform.resume_campaign("c-2")
    with pytest.raises(CampaignError, match="cannot resume"):
        pair.platform.resume_campaign(cid)
    with pytest.raises(CampaignError, match="cannot start the next wave"):
        pair.platform.next_campaign_wave(cid)
    with pytest.raises(CampaignError, match="cannot retry"):
        pair.platform.retry_failed(cid)
    pair.platform.cancel_campaign(cid)
    assert pair.platform.campaign_status(cid).state == "cancelled"
    pair.platform.campaigns.stop()
    with pytest.raises(CampaignError, match="not running"):
        pair.platform.pause_campaign(cid)


def test_a_restart_continues_the_campaign_without_starting_anyone_twice(pair: Pair) -> None:
    devices = fleet(pair)
    settings = CampaignSettings(rate=Rate(1), advance="immediate")
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, WAVES, settings=settings)
    pair.run_until("three starts", lambda: len(starts(pair, cid)) == 3)
    before = starts(pair, cid)
    pair.settle()
    pair.platform.stop()
    # a new platform process on the same data directory, same broker and clock
    pair.platform = Platform(pair.broker, data_dir=pair.root / "platform", clock=pair.clock).start()
    assert pair.platform.campaigns.ids() == [cid]
    assert {d: t for d, t in starts(pair, cid).items()} == before
    pair.run_until(
        "the campaign to succeed", lambda: pair.platform.campaign_status(cid).state == "succeeded"
    )
    assert {d.version for d in devices.values()} == {"2.0"}
    runs = pair.platform.campaigns.context(cid).devices
    assert all(r.starts == 1 for r in runs.values())
    assert {d: t for d, t in starts(pair, cid).items() if d in before} == before


def test_a_start_lost_with_a_dead_leader_is_sent_again_and_only_that_one(pair: Pair) -> None:
    """`start_lost`, what a pool's new leader calls: the devices its predecessor marked started
    but whose start never reached their OTA machine get it (and finish); the others do not."""
    runner = pair.platform.campaigns
    for name in NAMES:
        pair.platform.register_device(PRODUCT, name)
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES[:2]])
    pair.run_until("both started", lambda: runner.status(cid).waves[0].running == 2)
    posted: list[tuple[str, str]] = []
    post = pair.platform.runtime.post

    def spy(feature: str, key: DeviceKey, event: Event) -> None:
        posted.append((key.device, type(event).__name__))
        post(feature, key, event)

    pair.platform.runtime.post = spy  # type: ignore[method-assign]
    assert runner.start_lost(lambda key, version: True) == []
    assert runner.start_lost(lambda key, version: key.device != "dev-1") == [
        DeviceKey(PRODUCT, "dev-1")
    ]
    assert posted == [("dev-1", "DeployFirmware")]
    # dev-1's start had reached it after all (one still in flight when a leader dies looks
    # lost too): the same task again changed nothing, so it was not offered a second time
    pair.settle()
    ota = {n: pair.platform.runtime.session("ota", DeviceKey(PRODUCT, n)) for n in NAMES[:2]}
    assert {n: (s.state, s.ctx.offers) for n, s in ota.items()} == {
        "dev-0": ("offered", 1),
        "dev-1": ("offered", 1),
    }
    devices = fleet(pair)
    pair.run_until("the campaign to succeed", lambda: runner.status(cid).state == "succeeded")
    assert {d.version for d in list(devices.values())[:2]} == {"2.0"}
    assert runner.start_lost(lambda key, version: False) == [], "nobody runs any more"
