"""Carries out a session's transfer effects on worker threads and posts the outcomes back.

A machine says `StartDownload(transfer=7, ...)`; the runner fetches the file with the resumable
HTTP transfer on its own thread and steps `TransferStarted`, `TransferProgress`, then
`TransferDone` or `TransferFailed` back into the session, each stamped with 7. Transfers of the
same slot run one after the other: a cancelled download still holding the partial file finishes
its last chunk before the next download of that slot opens the file.

Progress is coalesced before it reaches the session: `TransferStarted` always, then a
`TransferProgress` only when the percentage changed or `PROGRESS_EVERY` seconds passed, and always
the last one (100 %). A download is then about a hundred steps whatever its chunk size; a step
per 64 KiB chunk cost 7 % of the loopback throughput (bench/RESULTS.md, P2'). The machines still
decide what to report (once a second): no percentage they could report is held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..fsm.events import Event
from ..machines.names import check_name
from ..machines.transfer import (
    TIMEOUT,
    CancelTransfer,
    StartDownload,
    StartUpload,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
    percent,
)
from .http.transfer import DEFAULT_CHUNK, TransferError, download, upload

log = logging.getLogger(__name__)

Post = Callable[[Event], None]

PROGRESS_EVERY = 0.25
"""Seconds after which an unchanged percentage is posted again (so the machine sees a flowing
download at least this often, e.g. 1 % of a 4 GB image on a slow link)."""


class ProgressGate:
    """Decides which progress callbacks become events: see the module docstring."""

    def __init__(self, clock: Callable[[], float], every: float = PROGRESS_EVERY) -> None:
        self._clock = clock
        self._every = every
        self._started = False
        self._pct = -1
        self._at = float("-inf")

    def __call__(self, done: int, size: int) -> bool:
        """Whether (done, size) should be posted now; the first call always is."""
        pct = percent(done, size)
        now = self._clock()
        due = not self._started or pct != self._pct or done >= size or now - self._at >= self._every
        if due:
            self._started = True
            self._pct, self._at = pct, now
        return due


class TransferRunner:
    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float = 30.0,
        checkpoint_every: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        url_check: Callable[[str], None] | None = None,
    ) -> None:
        """`root` is the folder of one feature's files (e.g. `<state dir>/ota`). Downloads
        checkpoint after every chunk unless `checkpoint_every` says otherwise, but not more often
        than every `DEFAULT_CHECKPOINT_INTERVAL` (0.25 s) after the first. A killed process
        resumes from its partial file's length (same boot), so it fetches again at most the chunk
        in flight; after a power cut, at most what arrived since the last fsync (4 MiB and 1 s).
        `clock` (monotonic seconds) times the checkpoints and the progress coalescing.
        `url_check(url)` raises a TransferError for a URL the device must not use (its URL
        policy); it runs on the transfer's thread, for every URL and redirect, before a byte
        moves."""
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.checkpoint_every = checkpoint_every or chunk_size
        self.clock = clock
        self.url_check = url_check
        self._lock = threading.Lock()
        self._cancels: dict[int, threading.Event] = {}
        self._slots: dict[str, threading.Lock] = {}
        self._threads: set[threading.Thread] = set()

    def paths(self, slot: str) -> tuple[Path, Path]:
        """(finished file, checkpoint) of a slot; the slot name is checked like any remote name.

        Each slot has a folder of its own, so no name (say `x.part`) can collide with another
        slot's partial file or checkpoint."""
        folder = self.root / check_name(slot, "slot")
        return folder / "data", folder / "checkpoint.json"

    def start_download(self, effect: StartDownload, post: Post) -> None:
        try:
            self.paths(effect.slot)
        except ValueError as exc:
            post(TransferFailed(effect.transfer, TIMEOUT, str(exc)))
            return
        self._spawn(effect.transfer, f"download-{effect.slot}", self._download, effect, post)

    def start_upload(self, effect: StartUpload, post: Post) -> None:
        self._spawn(effect.transfer, "upload", self._upload, effect, post)

    @property
    def busy(self) -> bool:
        """Whether any transfer thread is still running."""
        with self._lock:
            return bool(self._threads)

    def cancel(self, effect: CancelTransfer) -> None:
        with self._lock:
            flag = self._cancels.get(effect.transfer)
        if flag is not None:
            flag.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every transfer and wait for its thread (checkpoints are written on the way)."""
        with self._lock:
            for flag in self._cancels.values():
                flag.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _spawn(self, transfer: int, name: str, target: Callable[..., None], *args: object) -> None:
        flag = threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(transfer, flag, target, *args),
            name=f"iotfsm-{name}",
            daemon=True,
        )
        with self._lock:
            self._cancels[transfer] = flag
            self._threads.add(thread)
        thread.start()

    def _run(
        self, transfer: int, flag: threading.Event, target: Callable[..., None], *args: object
    ) -> None:
        try:
            target(flag, *args)
        finally:
            with self._lock:
                self._cancels.pop(transfer, None)
                self._threads.discard(threading.current_thread())

    def _slot_lock(self, slot: str) -> threading.Lock:
        with self._lock:
            return self._slots.setdefault(slot, threading.Lock())

    def _download(self, flag: threading.Event, effect: StartDownload, post: Post) -> None:
        dest, checkpoint = self.paths(effect.slot)
        gate = ProgressGate(self.clock)
        started = False

        def progress(done: int, size: int) -> None:
            nonlocal started
            if not gate(done, size):
                return
            if not started:
                started = True
                post(TransferStarted(effect.transfer, done, size))
            else:
                post(TransferProgress(effect.transfer, done, size))

        with self._slot_lock(effect.slot):
            if flag.is_set():
                post(TransferFailed(effect.transfer, TIMEOUT, "cancelled before it started"))
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                result = download(
                    effect.url,
                    dest,
                    size=effect.size,
                    md5=effect.md5,
                    identity={"label": effect.label},
                    checkpoint=checkpoint,
                    chunk_size=self.chunk_size,
                    checkpoint_every=self.checkpoint_every,
                    timeout=self.timeout,
                    on_progress=progress,
                    cancel=flag,
                    clock=self.clock,
                    url_check=self.url_check,
                )
            except TransferError as exc:
                post(TransferFailed(effect.transfer, int(exc.code), exc.message))
                return
            except (OSError, ValueError) as exc:
                log.warning("download into %s failed: %s", effect.slot, exc)
                post(TransferFailed(effect.transfer, TIMEOUT, str(exc)))
                return
        post(TransferDone(effect.transfer, str(result.path)))

    def _upload(self, flag: threading.Event, effect: StartUpload, post: Post) -> None:
        gate = ProgressGate(self.clock)

        def progress(done: int, size: int) -> None:
            if gate(done, size):
                post(TransferProgress(effect.transfer, done, size))

        try:
            if self.url_check is not None:
                self.url_check(effect.url)
            upload(
                effect.url,
                Path(effect.path),
                md5=effect.md5,
                size=effect.size,
                chunk_size=self.chunk_size,
                timeout=self.timeout,
                on_progress=progress,
                cancel=flag,
            )
        except TransferError as exc:
            post(TransferFailed(effect.transfer, int(exc.code), exc.message))
            return
        except (OSError, ValueError) as exc:
            post(TransferFailed(effect.transfer, TIMEOUT, str(exc)))
            return
        post(TransferDone(effect.transfer, effect.path))
