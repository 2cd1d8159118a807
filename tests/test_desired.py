"""The desired-state file: what is accepted, and a clear error for everything that is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotfsm.desired import (
    ConfigEntry,
    DesiredStateError,
    FirmwareEntry,
    LogLevelEntry,
    ResourceEntry,
    fingerprint,
    load,
)

GOOD = """
[[firmware]]
product = "P1"
devices = ["D1", "D2"]
version = "0.2"
file = "fw-0.2.bin"

[[config]]
product = "P1"
enabled = true
payload = { baud = 9600 }

[[log_level]]
product = "P1"
devices = ["*"]
level = 4

[[resource]]
product = "P1"
devices = ["D1"]
name = "faces.db"
file = "faces.db"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "fw-0.2.bin").write_bytes(b"firmware")
    (tmp_path / "faces.db").write_bytes(b"faces")
    path = tmp_path / "desired.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    state = load(write(tmp_path, GOOD))
    assert state.firmware == (FirmwareEntry("P1", ("D1", "D2"), "0.2", tmp_path / "fw-0.2.bin"),)
    assert state.config == (ConfigEntry("P1", True, {"baud": 9600}),)
    assert state.log_level == (LogLevelEntry("P1", ("*",), 4),)
    assert state.resource == (ResourceEntry("P1", ("D1",), "faces.db", tmp_path / "faces.db"),)


def test_fingerprints_change_with_the_file_contents(tmp_path: Path) -> None:
    entry = load(write(tmp_path, GOOD)).firmware[0]
    before = fingerprint(entry)
    (tmp_path / "fw-0.2.bin").write_bytes(b"other firmware")
    assert fingerprint(entry) != before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[firmware]\nproduct=", "not valid TOML"),
        ("[[nonsense]]\nx = 1\n", r"unknown section\(s\) \['nonsense'\]"),
        ("firmware = 3\n", "must be an array of tables"),
        (
            '[[firmware]]\nproduct = "P1"\ndevices = ["D1"]\nfile = "fw-0.2.bin"\n',
            "firmware\\[0\\]: missing 'version'",
        ),
        (
            '[[firmware]]\nproduct = "P-1"\ndevices = ["D1"]\nversion = "1"\nfile = "fw-0.2.bin"\n',
            "product 'P-1' must be",
        ),
        (
            '[[firmware]]\nproduct = "P1"\ndevices = ["D 1"]\nversion = "1"\nfile = "fw-0.2.bin"\n',
            "device name 'D 1' must be",
        ),
        (
            '[[firmware]]\nproduct = "P1"\ndevices = ["D1"]\nversion = "1"\nfile = "missing.bin"\n',
            "missing.bin does not exist",
        ),
        (
            '[[firmware]]\nproduct = "P1"\ndevices = []\nversion = "1"\nfile = "fw-0.2.bin"\n',
            "non-empty list",
        ),
        ('[[log_level]]\nproduct = "P1"\ndevices = ["*"]\nlevel = 7\n', "level 7 must be 0"),
        ('[[log_level]]\nproduct = "P1"\ndevices = ["*"]\nlevel = true\n', "'level' must be a int"),
        ('[[config]]\nproduct = "P1"\npayload = 5\n', "'payload' must be a table"),
        ('[[config]]\nproduct = "P1"\ncolour = "red"\n', r"unknown key\(s\) \['colour'\]"),
        (
            '[[resource]]\nproduct = "P1"\ndevices = ["D1"]\nname = "../x"\nfile = "faces.db"\n',
            "resource name '../x' refused",
        ),
        (
            '[[resource]]\nproduct = "P1"\ndevices = ["*"]\nname = "x"\nfile = "faces.db"\n',
            "device name '\\*' must be",
        ),
    ],
)
def test_invalid_files_are_refused_with_the_entry_named(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DesiredStateError, match=message):
        load(write(tmp_path, text))


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DesiredStateError, match="no such file"):
        load(tmp_path / "absent.toml")


def test_going_back_to_an_earlier_declaration_applies_it_again(tmp_path: Path) -> None:
    """Marks are kept per subject: 4 -> 3 -> 4 applies three times (a set of every mark ever
    applied skipped the last one, and the device stayed at 3); a store written by the earlier
    version (one row per applied mark) is not applied again on upgrade."""
    from iotfsm import MemoryBroker, Platform
    from iotfsm.reconcile import APPLIED, Reconciler

    path = tmp_path / "desired.toml"

    def declare(platform: Platform, level: int) -> list[str]:
        path.write_text(f'[[log_level]]\nproduct = "P1"\ndevices = ["D1"]\nlevel = {level}\n')
        return Reconciler(platform, path).apply()

    with Platform(MemoryBroker(), open_registry=True) as platform:
        for level in (4, 3, 4):
            assert declare(platform, level) == [f"log level {level} for P1/D1"]
            assert platform.log_level("P1", "D1") == level
        assert declare(platform, 4) == []
    with Platform(MemoryBroker(), open_registry=True) as upgraded:
        path.write_text('[[log_level]]\nproduct = "P1"\ndevices = ["D1"]\nlevel = 2\n')
        upgraded.store.put(APPLIED, fingerprint(load(path).log_level[0]), "log level 2")
        assert Reconciler(upgraded, path).apply() == []
        assert declare(upgraded, 1) == ["log level 1 for P1/D1"]
        assert declare(upgraded, 2) == ["log level 2 for P1/D1"]
