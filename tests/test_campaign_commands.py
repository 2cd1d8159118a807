"""`iotfsm campaign …` from another connection to the platform's store: commands are applied by
the running platform's runner exactly once; `status` reads the snapshots directly."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfsm.campaigns import COMMANDS, CampaignSettings, stored_statuses
from iotfsm.cli import main
from iotfsm.commands import status
from iotfsm.machines.campaign import Rate
from iotfsm.testing import Pair

PRODUCT = "CAMP000002"
IMAGE = random.Random(19).randbytes(10_000)
NAMES = [f"dev-{i}" for i in range(4)]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, product=PRODUCT)
    yield p
    p.close()


def started(pair: Pair, cid: str) -> set[str]:
    runs = pair.platform.campaigns.context(cid).devices
    return {d for d, r in runs.items() if r.starts}


def test_pause_and_resume_from_the_command_line_are_applied_once(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in NAMES:
        pair.device(n, version="1.0").start()
    settings = CampaignSettings(rate=Rate(1), advance="immediate")
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES], settings=settings)
    pair.run_until("one start", lambda: len(started(pair, cid)) == 1)
    data_dir = str(pair.root / "platform")
    assert main(["campaign", "pause", cid, "--data-dir", data_dir]) == 0
    assert pair.platform.campaign_status(cid).state == "running"  # queued, not yet applied
    runner = pair.platform.campaigns
    assert runner.apply_commands() == [f"campaign {cid} pause"]
    assert runner.apply_commands() == []  # nothing new written: not applied twice
    assert pair.platform.store.items(COMMANDS) == []
    assert pair.platform.campaign_status(cid).state == "paused"
    # the device started before the pause carries on: let it finish before the clock jumps, or
    # the jump would outrun its download and time it out
    pair.run_until(
        "the first device to succeed",
        lambda: pair.platform.campaign_status(cid).waves[0].succeeded == 1,
    )
    before = started(pair, cid)
    pair.advance(600)
    pair.run_until("quiet", pair.quiet)
    assert started(pair, cid) == before

    # a refused command is reported, deleted, and changes nothing
    assert main(["campaign", "pause", cid, "--data-dir", data_dir]) == 0
    [line] = runner.apply_commands()
    assert line.startswith(f"campaign {cid} pause refused: cannot pause")
    assert pair.platform.campaign_status(cid).state == "paused"

    assert main(["campaign", "resume", cid, "--data-dir", data_dir, "--json"]) == 0
    capsys.readouterr()
    assert runner.apply_commands() == [f"campaign {cid} resume"]
    pair.run_until(
        "the campaign to succeed", lambda: pair.platform.campaign_status(cid).state == "succeeded"
    )
    # the last device's success reaches the store with the runner's next save: wait for it
    pair.run_until(
        "the stored campaign to count every success",
        lambda: any(
            c.state == "succeeded" and sum(w.succeeded for w in c.waves) == 4
            for c in stored_statuses(pair.platform.store)
        ),
    )
    pair.platform.store.commit()
    assert main(["campaign", "status", cid, "--data-dir", data_dir, "--json"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["state"] == "succeeded" and doc["version"] == "2.0"
    assert [(w["size"], w["succeeded"]) for w in doc["waves"]] == [(4, 4)]
    assert main(["campaign", "status", "--data-dir", data_dir]) == 0
    assert f"campaign {cid}" in capsys.readouterr().out
    [row] = [r for r in status.rows(pair.root / "platform") if r["feature"] == "campaign"]
    assert row["device"] == cid and row["waves"] == "1: 4 succeeded"


def test_bad_commands_are_refused_and_write_nothing(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    pair.device(NAMES[0], version="1.0").start()
    cid = pair.platform.start_campaign(PRODUCT, "2.0", IMAGE, [NAMES[:1]])
    before = pair.platform.campaign_status(cid)
    data_dir = str(pair.root / "platform")
    assert main(["campaign", "pause", "c-nope", "--data-dir", data_dir]) == 1
    assert "no campaign 'c-nope'" in capsys.readouterr().err
    assert main(["campaign", "cancel", "--data-dir", data_dir]) == 1
    assert "needs the campaign's id" in capsys.readouterr().err
    assert main(["campaign", "status", "c-nope", "--data-dir", data_dir]) == 1
    assert main(["campaign", "status", "--data-dir", str(pair.root / "none")]) == 1
    assert pair.platform.store.items(COMMANDS) == []
    assert pair.platform.campaigns.apply_commands() == []
    assert pair.platform.campaign_status(cid) == before
