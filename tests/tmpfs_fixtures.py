"""A small tmpfs the test mounts and unmounts itself: a file system that really fills up.

Import `small_tmpfs` explicitly from the test module. Mounting needs root (or CAP_SYS_ADMIN): under
CI (CI=true) a refused mount FAILS with the reason, so a full-disk test can never pass unseen by
being skipped there; on a developer's machine without root it is skipped with the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TmpfsFactory = Callable[[int], Path]


def _refused(reason: str) -> None:
    message = (
        f"cannot mount a tmpfs for the full-disk test ({reason}); run the tests as root (or with "
        "CAP_SYS_ADMIN) so that `mount -t tmpfs` works"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[TmpfsFactory]:
    """`small_tmpfs(size_bytes)` mounts a fresh tmpfs of that size and returns its mount point;
    every mount is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            _refused(done.stderr.strip() or f"mount exited with {done.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write into `folder` until its file system refuses (ENOSPC); the file that took the room."""
    path = folder / name
    block = b"\0" * 65536
    with open(path, "ab", buffering=0) as out:
        while True:
            try:
                out.write(block)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                break
        # the last partial block: fill the very last bytes too
        with contextlib.suppress(OSError):
            while out.write(b"\0" * 512):
                pass
    return path
