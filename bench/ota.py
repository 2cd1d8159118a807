"""OTA download throughput: the device role against a bare urllib GET plus md5, in one run.

One random image (64 MiB by default) is generated once and served by one `Platform`'s HTTP file
service on 127.0.0.1. Each round then fetches it every way below, in an order rotated each round so
that no variant always follows the same one, and the medians of the rounds are compared:

- `bare /dev/null`: `urlopen(signed_url)`, `read(chunk)` in a loop feeding `hashlib.md5`, the data
  discarded. The issue's baseline ("a bare urllib GET plus md5").
- `bare to disk`: the same, every block also written to a file (page cache only, no fsync).
- `bare to disk+fsync`: the same, plus one fsync at the end: the least any downloader pays that
  says "the file is on disk" (the device promises more, see below).
- `download() adapter`: `iotfsm.adapters.http.transfer.download` alone with its defaults (64 KiB
  chunks, a checkpoint after 256 KiB and 0.25 s, partial and checkpoint fsynced after 4 MiB and
  1 s and at the end, md5 on a helper thread, the partial's writeback started every 4 MiB on
  another, md5 verified, renamed), no progress callback. (The device's `TransferRunner` asks for
  a checkpoint after every chunk, under the same 0.25 s floor.)
- `device role (OTA)`: the complete path. A fresh `Device` (version 1.0) is started on the memory
  broker; `Platform.deploy_firmware` offers 2.0 (signed URL over MQTT); the device machine starts
  the download, the runner's coalesced `TransferProgress` (a new percent or 0.25 s) is stepped
  through the machine, the md5 is
  verified, `TransferDone` moves it to `burning`. Timed from the offer on the wire to the
  `burning` report on the wire, both seen by an observer client on the same broker (no tracer,
  no patching); `offer -> done` (after the default burn step and the adopted version) is shown too.

MB here is 2**20 bytes. Everything runs in this process: the file service's request thread, the
client, and for the device its runtime and transfer thread, as in the library's own tests. The
platform keeps its sessions in a `MemoryStore`, because over the memory broker the platform steps on
the device's thread, and a SQLite commit there would be billed to the device.

Peak memory of the device path is measured in child processes (a fresh interpreter each, so RSS
starts clean): once with RSS sampled every millisecond, once under tracemalloc (peak since the
offer, what is still held at `burning`, and the top allocation sites of that), at the full size
and at one eighth of it, so that growth with the file size shows.

    python bench/ota.py                        # 64 MiB, 5 rounds, 20-30 s on 2 cores
    python bench/ota.py --quick                # smoke run, a few seconds
    python bench/ota.py --sweep                # + chunk size / checkpoint interval variants, ~1 min
    python bench/ota.py --profile /tmp/ota.pstats   # cProfile the device's transfer thread
    python bench/ota.py --size-mb 16 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import cpu_model

from iotfsm.adapters.http.transfer import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHUNK,
    DEFAULT_SYNC_EVERY,
    download,
)
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.adapters.store.session_store import MemoryStore
from iotfsm.device import Device
from iotfsm.platform import Platform

MB = 1 << 20
KB = 1 << 10
TARGET = 0.90
"""The issue's target: the device role reaches >= 90 % of the bare throughput."""
PRODUCT = "OTABENCH01"
FLAT_GROWTH = 0.01
"""Memory counts as flat when the tracemalloc peak grows by less than 1 % of the bytes added to
the image (from 1/8 of the size to the full size), and the RSS peak by less than 10 %."""
RUN_TIMEOUT = 300.0
"""Seconds one fetch may take before the run is declared broken."""

BARE_NULL = "bare-null"
BARE_DISK = "bare-disk"
BARE_FSYNC = "bare-disk-fsync"
ADAPTER = "adapter"
DEVICE = "device"
MAIN_VARIANTS = (BARE_NULL, BARE_DISK, BARE_FSYNC, ADAPTER, DEVICE)


class BenchError(Exception):
    """A fetch did not deliver the image intact, or the device did not finish: no figures."""


# ---- machine facts ------------------------------------------------------------------------------


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f}"


def filesystem_of(path: Path) -> str:
    """`fstype on device` of the mount holding `path` (fsync cost depends entirely on it)."""
    best = ("", "unknown", "unknown")
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount_point, fstype = parts[0], parts[1], parts[2]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fstype, device)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def rss_bytes() -> int:
    """Resident set size now, from /proc (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def machine_facts(work_dir: Path) -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "filesystem": filesystem_of(work_dir),
        "load": load_average(),
    }


# ---- the image ----------------------------------------------------------------------------------


def make_image(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` (1 MiB at a time, memory stays flat); their md5."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as out:
        left = size
        while left > 0:
            block = os.urandom(min(MB, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def copy_prefix(source: Path, dest: Path, size: int) -> str:
    """The first `size` bytes of `source` as a file of their own; their md5."""
    digest = hashlib.md5(usedforsecurity=False)
    with source.open("rb") as src, dest.open("wb") as out:
        left = size
        while left > 0 and (block := src.read(min(MB, left))):
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


# ---- one fetch each way -------------------------------------------------------------------------


@dataclass
class Measurement:
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def bare_get(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    size: int,
    md5: str,
    chunk: int,
    sink: Path | None,
    fsync: bool,
) -> Measurement:
    """The baseline: urllib GET, `read(chunk)` into md5, optionally written (and fsynced) too."""
    digest = hashlib.md5(usedforsecurity=False)
    got = 0
    start = time.perf_counter()
    with opener.open(url, timeout=30) as response:
        out = sink.open("wb") if sink is not None else None
        try:
            while block := response.read(chunk):
                digest.update(block)
                if out is not None:
                    out.write(block)
                got += len(block)
            if out is not None:
                out.flush()
                if fsync:
                    os.fsync(out.fileno())
        finally:
            if out is not None:
                out.close()
    elapsed = time.perf_counter() - start
    if sink is not None:
        sink.unlink()
    if got != size or digest.hexdigest() != md5:
        raise BenchError(f"bare GET got {got} bytes with md5 {digest.hexdigest()}, not the image")
    return Measurement(elapsed)


def adapter_get(
    url: str, work: Path, *, size: int, md5: str, chunk: int, checkpoint_every: int
) -> Measurement:
    """`download()` alone: chunks, md5, fsynced checkpoints, verify and rename; no callback."""
    dest = work / "adapter.bin"
    start = time.perf_counter()
    result = download(
        url,
        dest,
        size=size,
        md5=md5,
        identity={"version": "bench"},
        checkpoint=work / "adapter.checkpoint.json",
        chunk_size=chunk,
        checkpoint_every=checkpoint_every,
    )
    elapsed = time.perf_counter() - start
    dest.unlink()
    if result.size != size or result.md5 != md5 or result.resumed_from != 0:
        raise BenchError(f"download() returned {result}, not a fresh copy of the image")
    return Measurement(elapsed)


@dataclass
class _Watch:
    """What the observer saw of one device's OTA, stamped with `time.perf_counter()`."""

    offer: float | None = None
    burning: float | None = None
    done: float | None = None
    failure: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    on_offer: Callable[[], None] | None = None
    on_burning: Callable[[], None] | None = None


class OtaRig:
    """A platform, its file service and a memory broker, plus an observer of the OTA topics."""

    def __init__(self, root: Path, image: Path) -> None:
        self.root = root
        self.image = image
        self.broker = MemoryBroker()
        self.platform = Platform(
            self.broker, data_dir=root / "platform", store=MemoryStore(), url_ttl=3600.0
        ).start()
        self._watches: dict[str, _Watch] = {}
        self._runs = 0
        observer = self.broker.connect("bench-observer")
        observer.set_handlers(self._on_message, lambda up: None)
        observer.subscribe("$ota/#", 1)
        observer.start()
        self._observer = observer
        self.file_id = ""

    def publish(self) -> tuple[str, int, str]:
        """Publish the image on the file service: (file id, size, md5)."""
        ref = self.platform.files.publish_file(self.image, name="bench-image")
        self.file_id = ref.file_id
        return ref.file_id, ref.size, ref.md5

    def signed_url(self) -> str:
        return self.platform.files.signed_get_url(self.file_id, 3600.0)

    def close(self) -> None:
        self._observer.stop()
        self.platform.stop()

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        watch = self._watches.get(topic.rsplit("/", 1)[-1])
        if watch is None:
            return
        doc = json.loads(payload)
        kind = doc.get("type")
        if kind == "update_firmware" and watch.offer is None:
            watch.offer = now
            if watch.on_offer is not None:
                watch.on_offer()
        elif kind == "report_progress":
            state = doc["report"]["progress"]["state"]
            if state == "burning" and watch.burning is None:
                watch.burning = now
                if watch.on_burning is not None:
                    watch.on_burning()
            elif state == "done":
                watch.done = now
            elif state == "fail":
                watch.failure = json.dumps(doc["report"]["progress"])
                watch.finished.set()
        elif kind == "report_version" and watch.done is not None:
            # the last effect of adopting the version: the state directory is no longer written
            watch.finished.set()

    def device_ota(
        self,
        *,
        chunk: int,
        on_offer: Callable[[], None] | None = None,
        on_burning: Callable[[], None] | None = None,
    ) -> Measurement:
        """One complete OTA by a fresh device; seconds from offer to `burning` (and to `done`)."""
        self._runs += 1
        name = f"dev{self._runs:04d}"
        state_dir = self.root / name
        watch = _Watch(on_offer=on_offer, on_burning=on_burning)
        self._watches[name] = watch
        self.platform.register_device(PRODUCT, name)
        device = Device(
            PRODUCT, name, broker=self.broker, state_dir=state_dir, version="1.0", chunk_size=chunk
        ).start()
        try:
            deadline = time.monotonic() + 10
            while device.state("ota") != "idle":
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not reach idle: {device.state('ota')}")
                time.sleep(0.001)
            self.platform.deploy_firmware(PRODUCT, [name], "2.0", self.image)
            if not watch.finished.wait(RUN_TIMEOUT):
                raise BenchError(f"{name}: no done/fail report within {RUN_TIMEOUT:g} s")
            if watch.failure is not None:
                raise BenchError(f"{name} reported fail: {watch.failure}")
            if watch.offer is None or watch.burning is None or watch.done is None:
                raise BenchError(f"{name}: the observer missed the offer or a report")
            if device.version != "2.0":
                raise BenchError(f"{name} runs {device.version} after done, not 2.0")
        finally:
            device.stop()
            del self._watches[name]
            shutil.rmtree(state_dir, ignore_errors=True)
        return Measurement(watch.burning - watch.offer, {"to_done": watch.done - watch.offer})


# ---- rounds -------------------------------------------------------------------------------------


@dataclass
class Variant:
    key: str
    label: str
    run: Callable[[], Measurement]
    samples: list[Measurement] = field(default_factory=list)

    def median_seconds(self) -> float:
        return statistics.median(m.seconds for m in self.samples)

    def median_extra(self, name: str) -> float:
        return statistics.median(m.extra[name] for m in self.samples)


def run_rounds(variants: Sequence[Variant], repeat: int, *, verbose: bool) -> None:
    """One untimed warm-up of each, then `repeat` rounds, each in an order rotated by one."""
    for variant in variants:
        variant.run()
    for round_no in range(repeat):
        shift = round_no % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            variant.samples.append(variant.run())
        if verbose:
            print(f"  round {round_no + 1}/{repeat} done", file=sys.stderr, flush=True)


def mb_per_s(size: int, seconds: float) -> float:
    return size / MB / seconds


# ---- memory probe (child process) ---------------------------------------------------------------


def probe_memory(image: Path, chunk: int) -> dict[str, Any]:
    """In a fresh interpreter: peak memory of the device path for one image.

    First an OTA with RSS sampled every millisecond from the offer to `burning`; then a second
    one under tracemalloc, its peak reset at the offer, with what is still allocated at `burning`
    broken down by allocation site."""
    root = Path(tempfile.mkdtemp(prefix="probe-", dir=image.parent))
    rig = OtaRig(root, image)
    try:
        rig.publish()
        rig.device_ota(chunk=chunk)  # warm-up: imports, first-use caches, thread machinery

        samples: list[int] = []
        sampling = threading.Event()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                if sampling.is_set():
                    samples.append(rss_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        base_rss: list[int] = []

        def rss_offer() -> None:
            base_rss.append(rss_bytes())
            sampling.set()

        rig.device_ota(chunk=chunk, on_offer=rss_offer, on_burning=sampling.clear)
        stop.set()
        sampler.join()
        rss_peak = max([*samples, base_rss[0]]) - base_rss[0]

        tracemalloc.start(1)
        marks: dict[str, Any] = {}

        def traced_offer() -> None:
            tracemalloc.reset_peak()
            marks["base"] = tracemalloc.get_traced_memory()[0]
            marks["before"] = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()

        def traced_burning() -> None:
            current, peak = tracemalloc.get_traced_memory()
            marks["peak"] = peak
            marks["held"] = current
            marks["after"] = tracemalloc.take_snapshot()

        rig.device_ota(chunk=chunk, on_offer=traced_offer, on_burning=traced_burning)
        tracemalloc.stop()
        diff = marks["after"].compare_to(marks["before"], "lineno")
        top = [
            {"site": str(stat.traceback[0]), "bytes": stat.size_diff, "blocks": stat.count_diff}
            for stat in sorted(diff, key=lambda s: -s.size_diff)[:5]
            if stat.size_diff > 0
        ]
        return {
            "size": image.stat().st_size,
            "rss_peak_delta": rss_peak,
            "rss_samples": len(samples),
            "traced_peak": marks["peak"] - marks["base"],
            "traced_held_at_burning": marks["held"] - marks["base"],
            "top_held": top,
        }
    finally:
        rig.close()
        shutil.rmtree(root, ignore_errors=True)


def memory_in_child(image: Path, chunk: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--probe-memory", str(image), "--chunk-kb", str(chunk // KB)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"memory probe failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# ---- profile ------------------------------------------------------------------------------------


def profile_device(rig: OtaRig, chunk: int, out: Path) -> str:
    """cProfile the device's transfer thread during one OTA (the runner starts that thread, so
    a profile hook installed for new threads switches cProfile on inside it)."""
    profiler = cProfile.Profile()

    def hook(frame: Any, event: str, arg: Any) -> None:
        if threading.current_thread().name.startswith("iotfsm-download"):
            profiler.enable()  # replaces this hook in that thread only
        else:
            sys.setprofile(None)

    threading.setprofile(hook)
    try:
        rig.device_ota(chunk=chunk)
    finally:
        threading.setprofile(None)
    profiler.dump_stats(str(out))
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("tottime").print_stats(18)
    return text.getvalue()


# ---- main ---------------------------------------------------------------------------------------


def parse_size_list(text: str) -> list[int]:
    """`64K,1M,end` -> bytes; `end` is 0: one checkpoint (and fsync) at the end only."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip().upper()
        if part == "END":
            out.append(0)
        elif part.endswith("K"):
            out.append(int(part[:-1]) * KB)
        elif part.endswith("M"):
            out.append(int(part[:-1]) * MB)
        else:
            out.append(int(part))
    return out


def human(n: int) -> str:
    if n >= MB and n % MB == 0:
        return f"{n // MB} MiB"
    if n >= KB and n % KB == 0:
        return f"{n // KB} KiB"
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=float, default=64.0, help="image size in MiB (64)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 MiB, 3 rounds, no sweep or profile"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--chunk-kb", type=int, default=DEFAULT_CHUNK // KB, help="read size, all variants (64)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the image and downloads go (default: the temp dir; fsync cost depends on it)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time the adapter over --sweep-checkpoints and --sweep-chunks, and the device "
        "role over --sweep-device-chunks",
    )
    parser.add_argument("--sweep-checkpoints", default="64K,1M,4M,end")
    parser.add_argument("--sweep-chunks", default="16K,256K,1M")
    parser.add_argument("--sweep-device-chunks", default="256K,1M")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile one device OTA's transfer thread"
    )
    parser.add_argument("--probe-memory", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chunk = args.chunk_kb * KB
    if args.probe_memory is not None:
        print(json.dumps(probe_memory(args.probe_memory, chunk)))
        return 0
    size = int((4.0 if args.quick else args.size_mb) * MB)
    repeat = 3 if args.quick else args.repeat
    if size <= 0 or repeat <= 0 or chunk <= 0:
        print("--size-mb, --repeat and --chunk-kb must be positive", file=sys.stderr)
        return 2
    parent = args.dir if args.dir is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="iotfsm-ota-bench-", dir=parent))
    try:
        return run_bench(args, root, size=size, repeat=repeat, chunk=chunk)
    except BenchError as exc:
        print(f"INVALID RUN: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Fetchers:
    """Makes the zero-argument fetches that rounds call, all of the same served image."""

    rig: OtaRig
    opener: urllib.request.OpenerDirector
    work: Path
    size: int
    md5: str
    chunk: int

    def bare(self, sink: Path | None, fsync: bool) -> Callable[[], Measurement]:
        return lambda: bare_get(
            self.opener,
            self.rig.signed_url(),
            size=self.size,
            md5=self.md5,
            chunk=self.chunk,
            sink=sink,
            fsync=fsync,
        )

    def adapter(self, read: int, every: int) -> Callable[[], Measurement]:
        """`every` 0 means one checkpoint at the end only."""
        return lambda: adapter_get(
            self.rig.signed_url(),
            self.work,
            size=self.size,
            md5=self.md5,
            chunk=read,
            checkpoint_every=every or self.size,
        )

    def device(self, read: int) -> Callable[[], Measurement]:
        return lambda: self.rig.device_ota(chunk=read)


def main_variants(f: Fetchers) -> list[Variant]:
    every = human(DEFAULT_CHECKPOINT_EVERY)
    return [
        Variant(BARE_NULL, "bare urllib GET + md5, /dev/null", f.bare(None, False)),
        Variant(BARE_DISK, "bare + write to disk (no fsync)", f.bare(f.work / "bare.bin", False)),
        Variant(BARE_FSYNC, "bare + write + 1 fsync at end", f.bare(f.work / "bare.bin", True)),
        Variant(
            ADAPTER,
            f"download() adapter (ckpt {every}+0.25 s)",
            f.adapter(f.chunk, DEFAULT_CHECKPOINT_EVERY),
        ),
        Variant(DEVICE, "device role: offer -> burning", f.device(f.chunk)),
    ]


def sweep_variants(f: Fetchers, args: argparse.Namespace) -> list[Variant]:
    """The adapter over checkpoint intervals and read sizes, the device over chunk sizes."""
    sweep = [Variant(BARE_NULL, "bare urllib GET + md5, /dev/null", f.bare(None, False))]
    for every in parse_size_list(args.sweep_checkpoints):
        label = "end only" if every == 0 else human(every)
        sweep.append(
            Variant(
                f"adapter-ckpt-{label}",
                f"adapter, {human(f.chunk)} reads, checkpoint every {label}",
                f.adapter(f.chunk, every),
            )
        )
    for read in parse_size_list(args.sweep_chunks):
        sweep.append(
            Variant(
                f"adapter-chunk-{human(read)}",
                f"adapter, {human(read)} reads, checkpoint every {human(DEFAULT_CHECKPOINT_EVERY)}",
                f.adapter(read, DEFAULT_CHECKPOINT_EVERY),
            )
        )
    for read in parse_size_list(args.sweep_device_chunks):
        sweep.append(
            Variant(
                f"device-chunk-{human(read)}",
                f"device role, chunk_size={human(read)}",
                f.device(read),
            )
        )
    return sweep


def run_bench(args: argparse.Namespace, root: Path, *, size: int, repeat: int, chunk: int) -> int:
    facts = machine_facts(root)
    started = time.perf_counter()
    image = root / "image.bin"
    image_md5 = make_image(image, size)
    rig = OtaRig(root / "rig", image)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    work = root / "work"
    work.mkdir()
    try:
        _, served_size, served_md5 = rig.publish()
        if (served_size, served_md5) != (size, image_md5):
            raise BenchError("the file service does not serve the image as generated")
        fetchers = Fetchers(rig, opener, work, size, image_md5, chunk)
        variants = main_variants(fetchers)
        sweep = sweep_variants(fetchers, args) if args.sweep and not args.quick else []
        verbose = not args.json
        if verbose:
            print(f"timing {len(variants)} variants x {repeat} rounds ...", file=sys.stderr)
        run_rounds(variants, repeat, verbose=verbose)
        if sweep:
            if verbose:
                print(f"sweep: {len(sweep)} variants x {repeat} rounds ...", file=sys.stderr)
            run_rounds(sweep, repeat, verbose=verbose)
        profile_text = ""
        if args.profile is not None and not args.quick:
            profile_text = profile_device(rig, chunk, args.profile)
    finally:
        rig.close()

    memory: list[dict[str, Any]] = []
    if not args.no_memory:
        small = root / "image-small.bin"
        copy_prefix(image, small, max(size // 8, 256 * KB))
        for probe_image in (small, image):
            memory.append(memory_in_child(probe_image, chunk))
    facts["load_after"] = load_average()
    facts["wall_seconds"] = f"{time.perf_counter() - started:.1f}"
    report = summarize(variants, sweep, memory, size=size, repeat=repeat, chunk=chunk)
    report["machine"] = facts
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report, variants, sweep, size=size))
        if profile_text:
            print(f"\ncProfile of the device's transfer thread (saved to {args.profile}):")
            print(profile_text)
    return 0


def summarize(
    variants: Sequence[Variant],
    sweep: Sequence[Variant],
    memory: Sequence[dict[str, Any]],
    *,
    size: int,
    repeat: int,
    chunk: int,
) -> dict[str, Any]:
    by_key = {v.key: v for v in variants}

    def rate(key: str) -> float:
        return mb_per_s(size, by_key[key].median_seconds())

    device_rate = rate(DEVICE)
    ratios = {
        "device/bare-null": device_rate / rate(BARE_NULL),
        "device/bare-disk": device_rate / rate(BARE_DISK),
        "device/bare-disk-fsync": device_rate / rate(BARE_FSYNC),
        "adapter/bare-null": rate(ADAPTER) / rate(BARE_NULL),
        "device/adapter": device_rate / rate(ADAPTER),
    }

    def rows(group: Sequence[Variant]) -> list[dict[str, Any]]:
        out = []
        for v in group:
            seconds = [m.seconds for m in v.samples]
            row: dict[str, Any] = {
                "key": v.key,
                "label": v.label,
                "median_s": v.median_seconds(),
                "mb_per_s": mb_per_s(size, v.median_seconds()),
                "min_mb_per_s": mb_per_s(size, max(seconds)),
                "max_mb_per_s": mb_per_s(size, min(seconds)),
                "samples_s": seconds,
            }
            if v.samples and "to_done" in v.samples[0].extra:
                row["to_done_median_s"] = v.median_extra("to_done")
            out.append(row)
        return out

    return {
        "size": size,
        "repeat": repeat,
        "chunk": chunk,
        "checkpoint_every": DEFAULT_CHECKPOINT_EVERY,
        "sync_every": DEFAULT_SYNC_EVERY,
        "target": TARGET,
        "variants": rows(variants),
        "sweep": rows(sweep),
        "ratios": ratios,
        "pass": ratios["device/bare-null"] >= TARGET,
        "memory": list(memory),
    }


def render(
    report: dict[str, Any], variants: Sequence[Variant], sweep: Sequence[Variant], *, size: int
) -> str:
    m = report["machine"]
    lines = [
        f"iotfsm OTA download benchmark: {human(size)} image over 127.0.0.1, "
        f"{report['repeat']} rounds, {human(report['chunk'])} reads",
        f"{m['python']}, {m['nproc']} CPU ({m['cpu']}), {m['date']}, load {m['load']} -> "
        f"{m['load_after']}",
        f"files on {m['filesystem']}",
        "",
    ]

    def table(rows: Sequence[dict[str, Any]]) -> list[str]:
        head = f"{'variant':<48} {'median s':>9} {'MB/s':>7} {'min-max MB/s':>15}"
        out = [head, "-" * len(head)]
        for row in rows:
            spread = f"{row['min_mb_per_s']:.0f}-{row['max_mb_per_s']:.0f}"
            out.append(
                f"{row['label']:<48} {row['median_s']:>9.3f} {row['mb_per_s']:>7.1f} {spread:>15}"
            )
            if "to_done_median_s" in row:
                done = row["to_done_median_s"]
                out.append(
                    f"{'  (offer -> done, after burn + version)':<48} {done:>9.3f} "
                    f"{mb_per_s(size, done):>7.1f}"
                )
        return out

    lines += table(report["variants"])
    r = report["ratios"]
    lines += [
        "",
        "Ratios of median throughput:",
        f"  device / bare /dev/null        {r['device/bare-null']:6.1%}   (the issue's target)",
        f"  device / bare to disk          {r['device/bare-disk']:6.1%}",
        f"  device / bare to disk + fsync  {r['device/bare-disk-fsync']:6.1%}",
        f"  adapter / bare /dev/null       {r['adapter/bare-null']:6.1%}",
        f"  device / adapter               {r['device/adapter']:6.1%}",
    ]
    if report["sweep"]:
        lines += ["", "Sweep (same image, its own rounds):", *table(report["sweep"])]
    if report["memory"]:
        lines += [
            "",
            "Memory of the device path, offer -> burning (fresh child process per size):",
            f"{'image':>10} {'RSS peak delta':>15} {'tracemalloc peak':>17} "
            f"{'held at burning':>16}",
        ]
        for probe in report["memory"]:
            lines.append(
                f"{human(probe['size']):>10} {probe['rss_peak_delta'] / KB:>12.0f} KiB "
                f"{probe['traced_peak'] / KB:>13.0f} KiB "
                f"{probe['traced_held_at_burning'] / KB:>12.0f} KiB"
            )
        big = report["memory"][-1]
        if big["top_held"]:
            lines.append(f"  largest growth still held at burning ({human(big['size'])}):")
            for site in big["top_held"][:3]:
                lines.append(
                    f"    {site['bytes'] / KB:8.1f} KiB in {site['blocks']:>5} blocks  "
                    f"{site['site']}"
                )
    verdict = "PASS" if report["pass"] else "FAIL"
    lines += [
        "",
        "Target:",
        f"  {verdict}  device role >= {TARGET:.0%} of bare urllib GET + md5: "
        f"{r['device/bare-null']:.1%}",
    ]
    if report["memory"]:
        small, big = report["memory"][0], report["memory"][-1]
        growth = big["traced_peak"] - small["traced_peak"]
        added = max(1, big["size"] - small["size"])
        per_mb = growth * MB / added
        rss_growth = big["rss_peak_delta"] - small["rss_peak_delta"]
        flat = growth < FLAT_GROWTH * added and rss_growth < FLAT_GROWTH * 10 * added
        lines.append(
            f"  {'PASS' if flat else 'FAIL'}  flat memory: tracemalloc peak "
            f"{big['traced_peak'] / KB:.0f} KiB for {human(big['size'])} "
            f"({big['traced_peak'] / big['size']:.2%} of the image), "
            f"{small['traced_peak'] / KB:.0f} KiB for {human(small['size'])} "
            f"(growth {per_mb:.0f} B per MiB); RSS peak delta {big['rss_peak_delta'] / KB:.0f} KiB "
            f"and {small['rss_peak_delta'] / KB:.0f} KiB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
