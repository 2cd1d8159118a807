"""`iotfsm campaign start` against a platform's store: the flags become a checked declaration,
queued in `campaign_commands` and started by the running platform exactly once under the id
the command printed; a bad flag exits non-zero and writes nothing."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_fixtures import fresh_database

from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.campaigns import COMMANDS
from iotfsm.cli import main
from iotfsm.testing import Pair
from iotfsm.testing.postgres import PostgreSQL

PRODUCT = "CAMP000004"
IMAGE = random.Random(4).randbytes(8_000)
NAMES = [f"dev-{i}" for i in range(5)]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, product=PRODUCT)
    for n in NAMES:
        p.platform.register_device(PRODUCT, n)
    (tmp_path / "fw.bin").write_bytes(IMAGE)
    yield p
    p.close()


def start(pair: Pair, *flags: str) -> list[str]:
    data_dir = str(pair.root / "platform")
    base = ["campaign", "start", "--data-dir", data_dir, "--product", PRODUCT]
    return [*base, "--version", "2.0", "--image", str(pair.root / "fw.bin"), *flags]


def test_start_is_queued_printed_and_applied_once(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = (
        "--wave-counts", "2", "--rate", "30", "--rate-growth", "2", "--rate-every", "2",
        "--abort-percent", "20", "--abort-min-finished", "2", "--abort-codes=-4,-5",
        "--window", "00:00-00:00@Europe/Berlin", "--burn", "wait", "--device-timeout", "600",
        "--advance", "operator", "--success-percent", "50", "--cancel-on-abort",
    )  # fmt: skip
    assert main(start(pair, *flags)) == 0
    cid = capsys.readouterr().out.strip()
    assert cid.startswith("c-")
    runner = pair.platform.campaigns
    assert runner.ids() == []  # queued, not applied yet
    assert runner.apply_commands() == [f"campaign {cid} start"]
    assert runner.apply_commands() == []
    assert pair.platform.store.items(COMMANDS) == []
    plan = runner.context(cid).plan
    assert plan is not None and plan.waves == (("dev-0", "dev-1"), ("dev-2", "dev-3", "dev-4"))
    assert plan.rate is not None and (plan.rate.per_minute, plan.rate.growth) == (30, 2)
    assert plan.abort[0].codes == (-4, -5) and plan.abort[0].min_finished == 2
    assert plan.burn == "wait" and plan.daily_windows[0].tz == "Europe/Berlin"
    assert plan.cancel_on_abort and plan.advance == "operator" and plan.device_timeout == 600
    pair.run_until("wave 1 started", lambda: runner.status(cid).state == "waiting")

    # the same id again is refused at once, and by the platform if queued twice meanwhile
    assert main(start(pair, "--id", cid)) == 1
    assert f"campaign {cid!r} exists" in capsys.readouterr().err
    assert main(start(pair, "--id", "second", "--wave", "dev-0", "--wave", "dev-1,dev-2")) == 0
    assert main(start(pair, "--id", "second")) == 1
    assert runner.apply_commands() == ["campaign second start"]
    assert runner.context("second").plan.waves == (("dev-0",), ("dev-1", "dev-2"))  # type: ignore[union-attr]

    capsys.readouterr()
    assert main(start(pair, "--id", "third", "--paused", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["campaign"] == "third"
    assert runner.apply_commands() == ["campaign third start"]
    assert runner.status("third").state == "paused"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--burn", "wait"), 'burn "wait" needs maintenance windows'),
        (("--window", "25:00-03:00"), "windows[0]: window time '25:00' is not a time"),
        (("--window", "02:00"), "--window '02:00' must be HH:MM-HH:MM"),
        (("--window", "02:00-03:00@Nowhere/Land"), "time zone 'Nowhere/Land' is unknown"),
        (("--interval", "2026-12-05T02:00/2026-12-05T03:00Z"), "needs an offset"),
        (("--wave-counts", "2,x"), "--wave-counts '2,x' must be numbers"),
        (("--wave-counts", "2", "--wave", "dev-0"), "give one of wave_counts"),
        (("--advance", "sometimes"), "'advance': must be one of threshold"),
        (("--rate", "0"), "rate: 'per_minute': must be >= 0.001"),
        (("--abort-percent", "200"), "abort[0]: 'percent': must be 0.001-100"),
        (("--id", "no spaces"), "'id': 'no spaces' must be"),
        (("--devices", "dev-0,bad name"), "device name 'bad name'"),
        (("--start-at", "soon"), "'start_at': 'soon' is not an ISO 8601 time"),
    ],
)
def test_bad_flags_exit_non_zero_and_write_nothing(
    pair: Pair, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    assert main(start(pair, *flags)) == 1
    assert message in capsys.readouterr().err
    assert pair.platform.store.items(COMMANDS) == []


def test_missing_fields_and_misplaced_flags(
    pair: Pair, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data_dir = str(pair.root / "platform")
    assert main(["campaign", "start", "--data-dir", data_dir, "--product", PRODUCT]) == 1
    assert "campaign start: missing 'version'" in capsys.readouterr().err
    assert main([*start(pair)[:-2], "--image", str(tmp_path / "gone.bin")]) == 1
    assert "gone.bin does not exist" in capsys.readouterr().err
    assert main(["campaign", "pause", "x", "--data-dir", data_dir, "--rate", "5"]) == 1
    assert "--rate: only for campaign start" in capsys.readouterr().err
    assert pair.platform.store.items(COMMANDS) == []


def test_a_start_the_platform_cannot_carry_out_is_refused_and_deleted(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(start(pair, "--id", "ghosts", "--devices", "dev-0,ghost")) == 0
    [line] = pair.platform.campaigns.apply_commands()
    assert line.startswith("campaign ghosts start refused:") and "ghost is not registered" in line
    assert pair.platform.campaigns.ids() == [] and pair.platform.store.items(COMMANDS) == []


def test_start_and_pause_through_a_postgres_store(
    postgres_cluster: PostgreSQL,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool's platform keeps its store in PostgreSQL: `--store DSN` reaches it the same way."""
    name = fresh_database(postgres_cluster)
    dsn = postgres_cluster.url(name)
    monkeypatch.setenv("PGPASSFILE", str(postgres_cluster.passfile))
    (tmp_path / "fw.bin").write_bytes(IMAGE)
    p = Pair(tmp_path, product=PRODUCT, store=PostgresStore(postgres_cluster.conninfo(name)))
    try:
        p.platform.register_device(PRODUCT, "dev-0")
        flags = ["--store", dsn, "--product", PRODUCT, "--version", "2.0", "--id", "pg"]
        image = ["--image", str(tmp_path / "fw.bin"), "--advance", "operator"]
        assert main(["campaign", "start", *flags, *image]) == 0
        assert capsys.readouterr().out.strip() == "pg"
        assert p.platform.campaigns.apply_commands() == ["campaign pg start"]
        p.run_until("waiting", lambda: p.platform.campaign_status("pg").state == "waiting")
        assert main(["campaign", "cancel", "pg", "--store", dsn]) == 0
        assert p.platform.campaigns.apply_commands() == ["campaign pg cancel"]
        assert main(["campaign", "status", "pg", "--store", dsn, "--json"]) == 0
        capsys.readouterr()
        assert p.platform.campaign_status("pg").state == "cancelled"
    finally:
        p.close()
