"""The one writer of secret and public files (adapters.durable): the mode is the one asked for
whatever the umask, a file appears whole or not at all, and an exclusive create never replaces."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfsm.adapters.durable import create_file_exclusive, write_file_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask: the writer, not the umask, must keep secrets private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_0600_and_replaces_the_old_file_whole(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "sub" / "key"
    write_file_atomic(path, "old\n")
    write_file_atomic(path, b"new\n")
    assert path.read_bytes() == b"new\n" and _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"]  # no temporary file left


def test_a_public_file_gets_its_mode_even_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_file_atomic(tmp_path / "ca.crt", b"cert", 0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.crt") == 0o644


def test_an_exclusive_create_never_overwrites(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "password"
    create_file_exclusive(path, "first\n")
    assert _mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_file_exclusive(path, "second\n")
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["password"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_file_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_file_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
