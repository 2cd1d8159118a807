"""How often a download checkpoints, fsyncs and reports, with an injected clock (no sleeps):
checkpoints bounded by bytes and time, resume from the partial's length within one boot, and the
transfer runner's coalesced progress."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfsm.adapters.http import transfer as http_transfer
from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.http.transfer import (
    Checkpoint,
    ConnectionLostError,
    download,
    partial_path,
    read_checkpoint,
)
from iotfsm.adapters.transfer_runner import ProgressGate, TransferRunner
from iotfsm.fsm.clock import ManualClock
from iotfsm.fsm.events import Event
from iotfsm.machines.transfer import (
    StartDownload,
    TransferDone,
    TransferProgress,
    TransferStarted,
    percent,
)
from iotfsm.testing.waiting import wait_for

MB = 1024 * 1024
CHUNK = 64 * 1024


class Clock:
    """Monotonic seconds that move only when the test (or a progress callback) says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FileService]:
    with FileService(tmp_path / "platform", clock=ManualClock(1_700_000_000.0)) as svc:
        yield svc


@pytest.fixture
def saves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool, int]]:
    """Every checkpoint written: (offset, durable, partial length right after it)."""
    written: list[tuple[int, bool, int]] = []
    original = http_transfer._write_checkpoint

    def spy(path: Path, checkpoint: Checkpoint, durable: bool = True) -> None:
        original(path, checkpoint, durable)
        written.append((checkpoint.offset, durable, os.stat(checkpoint.partial).st_size))

    monkeypatch.setattr(http_transfer, "_write_checkpoint", spy)
    return written


def publish(service: FileService, size: int, seed: int = 1) -> tuple[str, bytes, str]:
    data = random.Random(seed).randbytes(size)
    ref = service.publish_file(data, name="fw")
    return service.signed_get_url("fw", 3600), data, ref.md5


def fetch(root: Path, url: str, data: bytes, md5: str, **kwargs: object) -> Path:
    dest = root / "dev" / "fw.bin"
    download(
        url,
        dest,
        size=len(data),
        md5=md5,
        identity={"version": "2.0"},
        checkpoint=root / "dev" / "checkpoint.json",
        **{"chunk_size": CHUNK, "checkpoint_every": CHUNK, **kwargs},  # type: ignore[arg-type]
    )
    return dest


# Checkpoints bounded by bytes and time -----------------------------------------------------------


def test_a_fast_link_checkpoints_every_quarter_second_and_fsyncs_every_second(
    service: FileService, tmp_path: Path, saves: list[tuple[int, bool, int]]
) -> None:
    """0.1 s per 64 KiB chunk (640 KiB/s): 128 chunks, but a checkpoint only every third chunk
    (the first one of the run excepted) and an fsync only every 4 MiB *and* second."""
    url, data, md5 = publish(service, 8 * MB)
    clock = Clock()
    times: dict[int, float] = {}

    def tick(done: int, size: int) -> None:
        times[done] = clock.now
        clock.now += 0.1

    dest = fetch(tmp_path, url, data, md5, clock=clock, on_progress=tick)
    assert dest.read_bytes() == data
    assert all(offset <= length for offset, _, length in saves), "checkpoint ahead of the data"
    streamed = saves[1:-1]  # the fresh start's offset 0 and the final durable one aside
    assert saves[0][:2] == (0, True) and saves[-1][:2] == (len(data), True)
    assert streamed[0][0] == CHUNK  # the first one of a run needs only the bytes
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(streamed)]
    assert min(gaps) >= 3 * CHUNK  # 0.25 s of chunks at 0.1 s each
    assert 35 <= len(streamed) <= 45  # not 128
    durable = [offset for offset, is_durable, _ in streamed if is_durable]
    assert durable, "no fsync while streaming"
    steps = [b - a for a, b in zip([0, *durable], durable, strict=False)]
    assert min(steps) >= 4 * MB
    assert all(times[b] - times[a] >= 1.0 for a, b in itertools.pairwise(durable))


def test_a_slow_link_still_checkpoints_every_chunk(
    service: FileService, tmp_path: Path, saves: list[tuple[int, bool, int]]
) -> None:
    """At 1 s per chunk the time floor is shorter than a chunk and changes nothing."""
    url, data, md5 = publish(service, 40 * CHUNK)
    clock = Clock()

    def tick(done: int, size: int) -> None:
        clock.now += 1.0

    fetch(tmp_path, url, data, md5, clock=clock, on_progress=tick)
    assert [offset for offset, _, _ in saves] == [0, *range(CHUNK, len(data) + 1, CHUNK), len(data)]


def test_a_loopback_speed_download_checkpoints_once_in_between(
    service: FileService, tmp_path: Path, saves: list[tuple[int, bool, int]]
) -> None:
    """No time passes at all: one checkpoint after the first chunk, then only the durable end."""
    url, data, md5 = publish(service, 4 * MB)
    fetch(tmp_path, url, data, md5, clock=Clock())
    assert [(offset, durable) for offset, durable, _ in saves] == [
        (0, True),
        (CHUNK, False),
        (len(data), True),
    ]


# Resume within one boot and after a reboot ------------------------------------------------------


def cut_and_lag(service: FileService, tmp_path: Path, boot: str) -> tuple[str, bytes, str, Path]:
    """A download cut at 1.5 MB whose checkpoint then lags at 1 MB, as after a SIGKILL between
    two time-floored checkpoints."""
    url, data, md5 = publish(service, 2 * MB)
    service.hooks.cut_after("fw", 1_500_000)
    with pytest.raises(ConnectionLostError):
        fetch(tmp_path, url, data, md5, boot_id=lambda: boot)
    checkpoint = tmp_path / "dev" / "checkpoint.json"
    raw = json.loads(checkpoint.read_text())
    assert raw["boot"] == boot and raw["offset"] == 1_500_000
    raw["offset"] = 1_000_000
    checkpoint.write_text(json.dumps(raw))
    return url, data, md5, checkpoint


def last_range(service: FileService) -> str | None:
    return [r.range for r in service.hooks.requests() if r.name == "fw"][-1]


def test_same_boot_resumes_from_the_partial_length(service: FileService, tmp_path: Path) -> None:
    url, data, md5, _checkpoint = cut_and_lag(service, tmp_path, "boot-A")
    seen: list[int] = []
    fetch(
        tmp_path, url, data, md5, boot_id=lambda: "boot-A", on_progress=lambda d, s: seen.append(d)
    )
    assert seen[0] == 1_500_000
    assert last_range(service) == f"bytes=1500000-{len(data) - 1}"
    assert (tmp_path / "dev" / "fw.bin").read_bytes() == data


@pytest.mark.parametrize("now", ["boot-B", None], ids=["another boot", "boot unknown"])
def test_after_a_reboot_bytes_past_the_checkpoint_are_dropped(
    service: FileService, tmp_path: Path, now: str | None
) -> None:
    url, data, md5, _checkpoint = cut_and_lag(service, tmp_path, "boot-A")
    partial = partial_path(tmp_path / "dev" / "fw.bin")
    with partial.open("r+b") as f:  # what a power cut may leave past the checkpoint
        f.seek(1_000_000)
        f.write(b"\0" * 500_000)
    fetch(tmp_path, url, data, md5, boot_id=lambda: now)
    assert last_range(service) == f"bytes=1000000-{len(data) - 1}"
    assert (tmp_path / "dev" / "fw.bin").read_bytes() == data


def test_resume_stamps_the_new_boot_before_it_writes(service: FileService, tmp_path: Path) -> None:
    """After a reboot the checkpoint is rewritten with the new boot at once: bytes written from
    then on may be trusted by a later run of the same boot, older ones may not."""
    url, data, md5, checkpoint = cut_and_lag(service, tmp_path, "boot-A")
    service.hooks.cut_after("fw", 100_000)  # the resumed request is cut again
    with pytest.raises(ConnectionLostError):
        fetch(tmp_path, url, data, md5, boot_id=lambda: "boot-B")
    saved = read_checkpoint(checkpoint)
    assert saved is not None and saved.boot == "boot-B" and saved.offset == 1_100_000


def test_a_partial_longer_than_the_file_is_never_trusted(
    service: FileService, tmp_path: Path
) -> None:
    url, data, md5, _checkpoint = cut_and_lag(service, tmp_path, "boot-A")
    with partial_path(tmp_path / "dev" / "fw.bin").open("ab") as f:
        f.write(b"\0" * MB)
    fetch(tmp_path, url, data, md5, boot_id=lambda: "boot-A")
    assert last_range(service) == f"bytes=1000000-{len(data) - 1}"
    assert (tmp_path / "dev" / "fw.bin").read_bytes() == data


def test_the_boot_id_is_read_from_the_system() -> None:
    boot = http_transfer.current_boot_id()
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert boot is not None and len(boot) >= 32
        assert http_transfer.current_boot_id() == boot
    else:
        assert boot is None


# Coalesced progress -----------------------------------------------------------------------------


def test_the_gate_passes_the_first_each_new_percent_the_last_and_one_per_interval() -> None:
    clock = Clock()
    gate = ProgressGate(clock, every=0.25)
    size = 10_000
    assert gate(0, size)  # 0 % at the start
    assert not gate(50, size)  # still 0 %, no time passed
    assert gate(100, size)  # 1 %
    assert not gate(150, size)
    clock.now += 0.2
    assert not gate(160, size)
    clock.now += 0.05
    assert gate(170, size)  # 0.25 s since the last post, same percent
    assert not gate(180, size)
    assert gate(size, size)  # 100 % always
    assert gate(size, size)  # ... even twice in a row (a resumed, already complete file)


def test_the_runner_posts_a_bounded_number_of_progress_events(
    service: FileService, tmp_path: Path
) -> None:
    """16 MiB in 64 KiB chunks is 256 chunks; with a clock that stands still the session sees
    the start, then one event per percent: no more than 101 progress events, 100 % last."""
    url, data, md5 = publish(service, 16 * MB)
    clock = Clock()
    runner = TransferRunner(tmp_path / "runner", chunk_size=CHUNK, clock=clock)
    events: list[Event] = []
    runner.start_download(StartDownload(1, url, len(data), md5, "2.0", "firmware"), events.append)
    wait_for("the download to finish", lambda: not runner.busy, timeout=30)
    assert isinstance(events[0], TransferStarted) and events[0].offset == 0
    assert isinstance(events[-1], TransferDone)
    progress = [e for e in events if isinstance(e, TransferProgress)]
    assert progress[-1].done == len(data)
    pcts = [percent(e.done, e.size) for e in progress]
    assert pcts == sorted(set(pcts)) and len(progress) <= 100
    assert hashlib.md5(Path(events[-1].path).read_bytes()).hexdigest() == md5


# The md5 thread, the writeback thread and disk errors --------------------------------------------


@pytest.mark.parametrize("chunk", [1000, CHUNK, 100_000, 3 * http_transfer.HASH_BLOCK // 2])
def test_the_md5_thread_sees_every_byte_once_in_order(
    service: FileService, tmp_path: Path, chunk: int
) -> None:
    """Chunk sizes that do and do not divide the md5 block, and one larger than it; half of the
    file first, then a resume: any lost, doubled or reordered block fails the md5 check."""
    url, data, md5 = publish(service, 3 * MB + 12345)
    service.hooks.cut_after("fw", len(data) // 2)
    kwargs = {"chunk_size": chunk, "checkpoint_every": chunk}
    with pytest.raises(ConnectionLostError):
        fetch(tmp_path, url, data, md5, **kwargs)
    dest = fetch(tmp_path, url, data, md5, **kwargs)
    assert dest.read_bytes() == data


def test_an_error_in_the_md5_thread_is_raised_by_close() -> None:
    class Broken:
        def update(self, data: object) -> None:
            raise MemoryError("no room for the md5")

    hasher = http_transfer._Hasher(Broken(), 1024, "test")  # type: ignore[arg-type]
    for _ in range(5):  # more blocks than exist: the thread hands them back even after failing
        hasher.space(1024)[:] = b"x" * 1024
        hasher.filled(1024)
    with pytest.raises(MemoryError, match="no room"):
        hasher.close()


def test_a_failed_background_fdatasync_fails_the_download_and_claims_nothing(
    service: FileService,
    tmp_path: Path,
    saves: list[tuple[int, bool, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Linux reports a writeback error to one fsync only: when the helper's fdatasync got it,
    no later fsync may make a checkpoint durable, and the download fails with a DiskError."""
    url, data, md5 = publish(service, 4 * MB)
    failed_after: list[int] = []

    def fdatasync(fd: int) -> None:
        failed_after.append(len(saves))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(http_transfer.DiskError) as raised:
        fetch(tmp_path, url, data, md5, sync_every=256 * 1024, clock=Clock())
    assert raised.value.code == -1
    assert "Input/output error" in raised.value.message
    assert "fw.bin.part" in raised.value.message
    [at] = failed_after
    assert not [s for s in saves[at:] if s[1]], "a durable checkpoint after the failed sync"
    assert not (tmp_path / "dev" / "fw.bin").exists()
    saved = read_checkpoint(tmp_path / "dev" / "checkpoint.json")
    assert saved is not None
    partial = partial_path(tmp_path / "dev" / "fw.bin").read_bytes()
    assert saved.offset <= len(partial) and partial[: saved.offset] == data[: saved.offset]


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from iotfsm.adapters.http.transfer import DiskError, download
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
try:
    download({url!r}, Path({dest!r}), size={size}, md5={md5!r}, identity={{"version": "2.0"}},
             checkpoint=Path({checkpoint!r}), chunk_size=65536, checkpoint_every=65536)
except DiskError as exc:
    print(int(exc.code), exc.message)
    sys.exit(3)
"""


def test_a_full_disk_is_a_disk_error_and_the_checkpoint_stays_behind_the_data(
    service: FileService, tmp_path: Path
) -> None:
    """A real failing write (a file size limit in a child process: EFBIG, as ENOSPC would be):
    a DiskError with code -1 that names the file and the cause; the checkpoint names only bytes
    that are in the partial, and a later run with room completes from there."""
    import subprocess
    import sys

    url, data, md5 = publish(service, 3 * MB)
    dest, checkpoint = tmp_path / "dev" / "fw.bin", tmp_path / "dev" / "checkpoint.json"
    limit = MB + 1000  # not a multiple of a chunk: the last write is cut short
    script = FULL_DISK.format(
        limit=limit, url=url, dest=str(dest), size=len(data), md5=md5, checkpoint=str(checkpoint)
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 3, child.stderr
    assert child.stdout.startswith("-1 writing the partial file"), child.stdout
    assert "File too large" in child.stdout
    partial = partial_path(dest).read_bytes()
    assert len(partial) == limit
    saved = read_checkpoint(checkpoint)
    assert saved is not None
    assert 0 < saved.offset <= len(partial)
    assert partial[: saved.offset] == data[: saved.offset]
    seen: list[int] = []
    fetch(tmp_path, url, data, md5, on_progress=lambda d, s: seen.append(d))
    assert seen[0] >= saved.offset
    assert dest.read_bytes() == data


def test_the_runner_cancels_a_download_mid_way(service: FileService, tmp_path: Path) -> None:
    """A slow link, a cancel at 25 %: the thread ends with a -1 failure, the checkpoint names
    bytes that are in the partial, and the md5 and writeback threads are gone."""
    import threading

    from iotfsm.machines.transfer import CancelTransfer, TransferFailed

    url, data, md5 = publish(service, 2 * MB)
    service.hooks.rate_limit = 4 * MB
    runner = TransferRunner(tmp_path / "runner", chunk_size=CHUNK)
    events: list[Event] = []
    quarter = threading.Event()

    def post(event: Event) -> None:
        events.append(event)
        if isinstance(event, TransferProgress) and event.done >= len(data) // 4:
            quarter.set()

    runner.start_download(StartDownload(1, url, len(data), md5, "2.0", "firmware"), post)
    assert quarter.wait(30)
    runner.cancel(CancelTransfer(1))
    wait_for("the download thread to end", lambda: not runner.busy, timeout=30)
    failed = events[-1]
    assert isinstance(failed, TransferFailed) and failed.code == -1 and "cancelled" in failed.reason
    dest, checkpoint = runner.paths("firmware")
    saved = read_checkpoint(checkpoint)
    assert saved is not None
    partial = partial_path(dest).read_bytes()
    assert len(data) // 4 <= saved.offset <= len(partial) < len(data)
    assert partial[: saved.offset] == data[: saved.offset]
    assert not [t for t in threading.enumerate() if t.name.startswith(("iotfsm-md5", "iotfsm-wr"))]
