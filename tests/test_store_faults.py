"""The platform's SQLite store when its disk fills and when its file is damaged (issue 16, 1-2).

A full disk: SQLite rolls a failed COMMIT back by itself; the store must not believe a transaction
is still open (it did: every later commit failed with "no transaction is active"). What could not
be written stays pending in memory and is written at the next commit, so once there is room the
file agrees with memory again, and the platform answered every report meanwhile.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tmpfs_fixtures import TmpfsFactory, fill, small_tmpfs

from iotfsm import Platform, cli
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.adapters.store.session_store import (
    WARN_EVERY,
    SqliteStore,
    StoreCorruptError,
    move_aside,
)
from iotfsm.commands.common import STORE_DAMAGED
from iotfsm.fsm.clock import ManualClock
from iotfsm.fsm.snapshot import snapshot
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.server import free_port

__all__ = ["small_tmpfs"]

PRODUCT = "PSTOREFULL"
DEVICES = 40


def _report(version: str) -> bytes:
    return json.dumps({"type": "report_version", "report": {"version": version}}).encode()


def test_a_platform_on_a_full_disk_answers_every_report_and_its_store_catches_up(
    small_tmpfs: TmpfsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data_dir = small_tmpfs(4 * 1024 * 1024)
    broker = MemoryBroker()
    platform = Platform(broker, data_dir=data_dir).start()
    for d in range(DEVICES):
        platform.register_device(PRODUCT, f"dev-{d}")
    devices = broker.connect("devices")
    answers: list[str] = []
    devices.set_handlers(lambda topic, payload: answers.append(topic), lambda up: None)
    devices.subscribe(f"$ota/update/{PRODUCT}/+", 1)
    devices.start()
    sent = 0

    def burst(rounds: int, tag: str) -> None:
        nonlocal sent
        for r in range(rounds):
            for d in range(DEVICES):
                version = f"{tag}.{r}.{d}-" + "x" * 20
                devices.publish(f"$ota/report/{PRODUCT}/dev-{d}", _report(version), 1)
                sent += 1

    burst(2, "1")
    assert platform.store.pending == 0  # type: ignore[attr-defined]
    filler = fill(data_dir)
    burst(60, "2")  # 2,400 reports while nothing can be written
    assert isinstance(platform.store, SqliteStore)
    assert platform.store.pending > 0, "the disk never filled up for the store"
    filler.unlink()
    burst(5, "3")
    assert len(answers) == sent, f"{sent - len(answers)} reports got no answer"
    assert platform.store.pending == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    full = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(full) == 1, full
    assert any("writing works again" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)

    memory = {
        s.key: snapshot(s, platform.runtime._converter)
        for s in platform.runtime.sessions["ota"].values()
    }
    platform.stop()
    on_disk = {
        k: doc for f, k, doc in SqliteStore(data_dir / "platform.sqlite3").load() if f == "ota"
    }
    assert len(memory) == DEVICES
    assert on_disk == memory


def test_records_put_while_the_disk_is_full_are_read_back_and_written_later(
    small_tmpfs: TmpfsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    folder = small_tmpfs(4 * 1024 * 1024)
    clock = ManualClock()
    store = SqliteStore(folder / "s.sqlite3", clock=clock.now)
    store.put("t", "kept", {"n": 0})
    store.put("t", "gone", {"n": 0})
    filler = fill(folder)
    big = "y" * 3000
    for n in range(200):
        store.put("t", f"k{n}", {"n": n, "pad": big})
        store.save("ota", DeviceKey(PRODUCT, f"d{n}"), {"state": "idle", "pad": big})
        store.commit()
        clock.advance(1.0)
    store.delete("t", "gone")
    assert store.pending > 0
    assert store.get("t", "k7") == {"n": 7, "pad": big}
    assert store.get("t", "gone") is None
    assert [k for k, _ in store.items("t")][:3] == ["k0", "k1", "k10"]
    assert "gone" not in dict(store.items("t"))
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "iotfsm.adapters.store.session_store"
    ]
    # one line at the start, then one per WARN_EVERY seconds of the 200 s it lasted
    assert 1 <= len(warnings) <= 1 + 200 / WARN_EVERY, warnings
    assert "cannot be written" in warnings[0] and "database or disk is full" in warnings[0]
    filler.unlink()
    store.commit()
    assert store.pending == 0
    store.close()
    again = SqliteStore(folder / "s.sqlite3")
    assert again.get("t", "k199") == {"n": 199, "pad": big}
    assert again.get("t", "gone") is None
    assert again.get("t", "kept") == {"n": 0}
    assert len(list(again.load())) == 200
    again.close()


# ---- a damaged file ---------------------------------------------------------------------------


def _damaged(path: Path) -> None:
    """A real store whose pages in the middle were overwritten (a bad sector, a torn copy)."""
    store = SqliteStore(path)
    for n in range(3000):
        store.save("ota", DeviceKey(PRODUCT, f"d{n}"), {"state": "idle", "n": n, "pad": "z" * 80})
        store.put("files", f"f{n}", {"n": n})
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(path, "r+b") as f:
        f.seek(4096 * 20)
        f.write(bytes(range(256)) * 16 * 8)


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_store_file_is_refused_with_a_typed_error_naming_it(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "platform.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 500)
    else:
        _damaged(path)
    with pytest.raises(StoreCorruptError) as caught:
        SqliteStore(path)
    text = str(caught.value)
    assert str(path) in text and "--reset-store" in text and "restore" in text
    assert caught.value.path == path


def test_move_aside_keeps_the_file_and_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "platform.sqlite3"
    path.write_bytes(b"garbage")
    (tmp_path / "platform.sqlite3-wal").write_bytes(b"wal")
    aside = move_aside(path, now=lambda: 0.0)
    assert aside == tmp_path / "platform.sqlite3.corrupt-19700101T000000Z"
    assert aside.read_bytes() == b"garbage"
    assert (tmp_path / "platform.sqlite3.corrupt-19700101T000000Z-wal").read_bytes() == b"wal"
    assert not path.exists()
    second = tmp_path / "platform.sqlite3"
    second.write_bytes(b"again")
    assert move_aside(second, now=lambda: 0.0) == aside.with_name(aside.name + "-2")
    assert move_aside(tmp_path / "none.sqlite3") is None


# ---- the commands on a damaged store ----------------------------------------------------------


def _iotfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfsm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _platform_args(data_dir: Path, *extra: str) -> list[str]:
    broker = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens: the run ends after the store
    return [
        "platform",
        "--broker",
        broker,
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--connect-timeout",
        "0.5",
        *extra,
    ]


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_platform_and_status_refuse_a_damaged_store_with_one_line_and_exit_3(
    tmp_path: Path, damage: str
) -> None:
    data_dir = tmp_path / "p"
    data_dir.mkdir()
    path = data_dir / "platform.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"\x89garbage" * 1000)
    else:
        _damaged(path)
    before = path.read_bytes()
    for args in (_platform_args(data_dir), ["status", "--data-dir", str(data_dir)]):
        done = _iotfsm(*args)
        assert done.returncode == STORE_DAMAGED, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert str(path) in lines[0] and "damaged" in lines[0] and "--reset-store" in lines[0]
    assert path.read_bytes() == before  # refused, not touched
    assert "exit codes" in _iotfsm("platform", "--help").stdout


def test_every_command_that_opens_the_store_refuses_a_damaged_one_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not only `platform` and `status`: registry, api-token, campaign and broker-config read
    the same file (they gave a raw StoreCorruptError traceback and exit 1). In-process, through
    `cli.main`, where the one line and the exit code are made."""
    data_dir = tmp_path / "p"
    data_dir.mkdir()
    path = data_dir / "platform.sqlite3"
    path.write_bytes(b"\x89garbage" * 1000)
    d = str(data_dir)
    for args in (
        ["registry", "list", "--data-dir", d],
        ["registry", "add", "--data-dir", d, "--product-id", PRODUCT, "--device-name", "d1"],
        ["api-token", "list", "--data-dir", d],
        ["campaign", "status", "--data-dir", d],
        ["broker-config", "mosquitto", "--data-dir", d, "--out", str(tmp_path / "mq")],
    ):
        assert cli.main(args) == STORE_DAMAGED, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        assert str(path) in lines[0] and "--reset-store" in lines[0], (args, lines)
    assert path.read_bytes() == b"\x89garbage" * 1000
    with pytest.raises(SystemExit):
        cli.main(["registry", "--help"])
    assert "exit codes" in capsys.readouterr().out


def test_reset_store_moves_a_damaged_store_aside_and_keeps_a_healthy_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "p"
    data_dir.mkdir()
    path = data_dir / "platform.sqlite3"
    path.write_bytes(b"garbage" * 100)
    done = _iotfsm(*_platform_args(data_dir, "--reset-store"))
    # the store opens fresh; the run then ends on the unreachable broker (exit 1, not 3)
    assert done.returncode == 1, done.stderr
    assert "cannot reach the broker" in done.stderr and "moved the damaged store" in done.stderr
    kept = list(data_dir.glob("platform.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in kept] == [b"garbage" * 100]
    fresh = SqliteStore(path)
    fresh.put("t", "k", 1)
    fresh.close()
    again = _iotfsm(*_platform_args(data_dir, "--reset-store"))
    assert again.returncode == 1 and "moved" not in again.stderr
    assert SqliteStore(path).get("t", "k") == 1
    assert len(list(data_dir.glob("platform.sqlite3.corrupt-*"))) == 1
