"""`[[campaigns]]` in the desired-state file: checked field by field, started once by reconcile
(across repeated runs and a platform restart), moved by its declared `state`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfsm.desired import DesiredStateError, load
from iotfsm.machines.windows import DailyWindow
from iotfsm.reconcile import Reconciler
from iotfsm.testing import Pair

PRODUCT = "CAMP000003"
IMAGE = random.Random(3).randbytes(5_000)
NAMES = [f"dev-{i}" for i in range(4)]
DEVICES = f'[[devices]]\nproduct = "{PRODUCT}"\ndevices = {NAMES!r}\n'.replace("'", '"')


def campaign(state: str = "running", **extra: str) -> str:
    fields = {
        "id": '"spring"',
        "product": f'"{PRODUCT}"',
        "version": '"2.0"',
        "file": '"fw.bin"',
        "wave_counts": "[1]",
        "advance": '"operator"',
        "state": f'"{state}"',
        **extra,
    }
    return "[[campaigns]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v)


def write(root: Path, text: str) -> Path:
    (root / "fw.bin").write_bytes(IMAGE)
    path = root / "desired.toml"
    path.write_text(text)
    return path


def test_every_field_loads(tmp_path: Path) -> None:
    text = campaign(
        devices='["dev-0", "dev-1", "dev-2"]',
        wave_counts="",
        wave_percents="[34, 33]",
        success_percent="90",
        rate="{ per_minute = 30, growth = 2, every = 10, max_per_minute = 120 }",
        abort="[{ percent = 10, min_finished = 2, codes = [-4, -5], timeouts = true }]",
        device_timeout="3600",
        windows='[{ start = "02:00", end = "04:00", tz = "Europe/Berlin" }]',
        intervals="[{ start = 2026-12-05T02:00:00Z, end = 2026-12-05T04:00:00+01:00 }]",
        burn='"wait"',
        cancel_on_abort="true",
        start_at="2026-12-05T01:00:00Z",
    )
    [spec] = load(write(tmp_path, text)).campaigns
    assert spec.id == "spring" and spec.file == tmp_path / "fw.bin" and spec.state == "running"
    assert spec.split([]) == (("dev-0", "dev-1"), ("dev-2",))
    s = spec.settings
    assert (s.rate.per_minute, s.rate.growth, s.rate.every) == (30, 2, 10)  # type: ignore[union-attr]
    assert s.abort[0].codes == (-4, -5) and s.abort[0].timeouts
    assert s.daily_windows == (DailyWindow("02:00", "04:00", "Europe/Berlin"),)
    assert s.intervals[0].end - s.intervals[0].start == 3600
    assert s.burn == "wait" and s.cancel_on_abort and s.start_at == 1_796_432_400
    explicit = load(write(tmp_path, campaign(wave_counts="", waves='[["a"], ["b", "c"]]')))
    assert explicit.campaigns[0].split(["zzz"]) == (("a",), ("b", "c"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"colour": '"red"'}, r"campaigns\[0\]: unknown key\(s\) \['colour'\]"),
        ({"id": '"a b"'}, r"campaigns\[0\]: 'id': 'a b' must be"),
        ({"id": ""}, r"campaigns\[0\]: missing 'id'"),
        ({"version": "2"}, r"'version': must be a string, got 2"),
        ({"file": '"gone.bin"'}, r"'file': .*gone.bin does not exist"),
        ({"state": "stopped"}, r"'state': must be one of running, paused, cancelled"),
        ({"wave_counts": "[0]"}, r"'wave_counts': must be a non-empty list of whole numbers"),
        ({"waves": '[["a"]]'}, r"'waves': give one of wave_counts, wave_percents, waves"),
        ({"rate": '"fast"'}, r"'rate': must be a number"),
        ({"rate": "{ per_minute = 1, growth = 0.5 }"}, r"rate: 'growth': must be >= 1"),
        ({"abort": "[{ percent = 150 }]"}, r"abort\[0\]: 'percent': must be 0.001-100"),
        ({"rate": "{ growth = 2.0 }"}, r"rate: missing 'per_minute'"),
        ({"rate": "{ per_minute = 1, every = -1 }"}, r"rate: 'every': must be a whole number"),
        ({"abort": "[{ percent = 5, every = 1 }]"}, r"abort\[0\]: 'every': unknown; use"),
        ({"abort": "[{ percent = 5, min_finished = 0 }]"}, r"'min_finished': must be a whole"),
        ({"windows": '[{ start = "02:00" }]'}, r"windows\[0\]: missing 'end'"),
        ({"abort": '[{ percent = 5, codes = ["x"] }]'}, r"abort\[0\]: 'codes'"),
        ({"windows": '[{ start = "25:00", end = "03:00" }]'}, r"windows\[0\]: .*not a time"),
        ({"windows": '[{ start = "02:00", end = "03:00", tz = "Mars/Base" }]'}, "Mars/Base"),
        (
            {"intervals": "[{ start = 2026-12-05T02:00:00, end = 2026-12-05T03:00:00Z }]"},
            r"intervals\[0\]: 'start': 2026-12-05T02:00:00 needs an offset",
        ),
        (
            {"intervals": "[{ start = 2026-12-05T04:00:00Z, end = 2026-12-05T03:00:00Z }]"},
            r"intervals\[0\]: 'end': must be after start",
        ),
        ({"burn": '"wait"'}, r'campaigns\[0\]: burn "wait" needs maintenance windows'),
        ({"burn": '"never"'}, r"'burn': must be one of allow, wait"),
        ({"start_at": '"tomorrow"'}, r"'start_at': 'tomorrow' is not an ISO 8601 time"),
        ({"success_percent": "true"}, r"'success_percent': must be a number"),
    ],
)
def test_bad_declarations_name_the_entry_and_the_field(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(DesiredStateError, match=message):
        load(write(tmp_path, campaign(**extra)))


def test_two_campaigns_with_one_id_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DesiredStateError, match=r"campaigns\[1\]: 'id': 'spring' is also"):
        load(write(tmp_path, campaign() + campaign()))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, product=PRODUCT)
    yield p
    p.close()


def started(pair: Pair, cid: str = "spring") -> set[str]:
    return {d for d, r in pair.platform.campaigns.context(cid).devices.items() if r.starts}


def test_reconcile_starts_it_once_and_follows_its_state(pair: Pair, tmp_path: Path) -> None:
    path = write(tmp_path, DEVICES + campaign())
    reconciler = Reconciler(pair.platform, path)
    applied = reconciler.apply()
    assert f"campaign spring started ({PRODUCT} -> 2.0, running)" in applied
    status = pair.platform.campaign_status("spring")
    assert [w.size for w in status.waves] == [1, 3]  # wave_counts [1], then the rest

    def waiting() -> bool:
        return pair.platform.campaign_status("spring").state == "waiting"

    pair.run_until("wave 1 started", waiting)
    assert started(pair) == {"dev-0"}
    assert reconciler.apply() == []  # idempotent
    assert pair.platform.campaigns.ids() == ["spring"]

    write(tmp_path, DEVICES + campaign("paused"))
    assert reconciler.apply() == ["campaign spring paused"]
    assert pair.platform.campaign_status("spring").state == "paused"
    # an operator resumes it; an edit elsewhere in the file does not pause it again
    pair.platform.resume_campaign("spring")
    pair.run_until("waiting again", waiting)
    write(tmp_path, DEVICES + "\n# note\n" + campaign("paused"))
    assert reconciler.apply() == []
    assert waiting()
    write(tmp_path, DEVICES + campaign("cancelled"))
    assert reconciler.apply() == ["campaign spring cancelled"]
    assert pair.platform.campaign_status("spring").state == "cancelled"
    write(tmp_path, DEVICES + campaign("running"))
    assert reconciler.apply() == ["campaign spring is cancelled: nothing to do for running"]


def test_a_restart_starts_nobody_again(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICES + campaign("running", advance='"immediate"'))
    first = Pair(tmp_path, product=PRODUCT)
    try:
        assert len(Reconciler(first.platform, path).apply()) == 2
        first.run_until("every start", lambda: started(first) == set(NAMES))
        once = first.platform.campaigns.context("spring").devices
        assert {d: r.starts for d, r in once.items()} == dict.fromkeys(NAMES, 1)
    finally:
        first.close()
    again = Pair(tmp_path, product=PRODUCT)
    try:
        assert Reconciler(again.platform, path).apply() == []
        runs = again.platform.campaigns.context("spring").devices
        assert {d: r.starts for d, r in runs.items()} == dict.fromkeys(NAMES, 1)
    finally:
        again.close()


def test_declared_paused_or_cancelled_from_the_start(pair: Pair, tmp_path: Path) -> None:
    path = write(tmp_path, DEVICES + campaign("paused", advance='"immediate"'))
    reconciler = Reconciler(pair.platform, path)
    assert reconciler.apply()[-1] == f"campaign spring started ({PRODUCT} -> 2.0, paused)"
    pair.advance(600)
    assert pair.platform.campaign_status("spring").state == "paused" and started(pair) == set()
    write(tmp_path, DEVICES + campaign("running", advance='"immediate"'))
    assert reconciler.apply() == ["campaign spring running"]
    pair.run_until("every device started", lambda: started(pair) == set(NAMES))

    other = write(tmp_path, DEVICES + campaign("cancelled").replace('"spring"', '"later"'))
    assert Reconciler(pair.platform, other).apply() == [
        "campaign later declared cancelled: not started"
    ]
    assert pair.platform.campaigns.ids() == ["spring"]


def test_unregistered_devices_refuse_the_whole_file(pair: Pair, tmp_path: Path) -> None:
    text = DEVICES + campaign(wave_counts="", waves='[["dev-0"], ["ghost"]]')
    text += '[[log_level]]\nproduct = "CAMP000003"\ndevices = ["dev-0"]\nlevel = 4\n'
    with pytest.raises(DesiredStateError, match=r"campaigns\[0\]: 'waves': .*/ghost is not reg"):
        Reconciler(pair.platform, write(tmp_path, text)).apply()
    assert pair.platform.campaigns.ids() == []
    assert pair.platform.registry.devices(PRODUCT) == []  # the [[devices]] entry was not applied
    with pytest.raises(DesiredStateError, match=r"'devices': CAMP000003 has no registered dev"):
        Reconciler(pair.platform, write(tmp_path, campaign())).apply()


def test_a_campaign_started_elsewhere_under_the_declared_id_is_adopted(
    pair: Pair, tmp_path: Path
) -> None:
    Reconciler(pair.platform, write(tmp_path, DEVICES)).apply()
    pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES], campaign_id="spring")
    pair.run_until("started", lambda: started(pair) == set(NAMES))
    path = write(tmp_path, DEVICES + campaign("paused"))
    assert Reconciler(pair.platform, path).apply() == ["campaign spring paused"]
    assert pair.platform.campaigns.ids() == ["spring"]
    assert len(pair.platform.campaigns.context("spring").devices) == 4  # its own plan, kept


def test_a_device_in_two_explicit_waves_is_refused(tmp_path: Path) -> None:
    text = campaign(wave_counts="", waves='[["a", "b"], ["b"]]')
    with pytest.raises(DesiredStateError, match=r"campaigns\[0\]: device 'b' is in more than one"):
        load(write(tmp_path, text))
